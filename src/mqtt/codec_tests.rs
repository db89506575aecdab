//! Placeholder: table-driven decoder tests land here.
