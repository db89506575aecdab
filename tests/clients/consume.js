// Reads a topic from the beginning with kafkajs (in a consumer group, as
// kafkajs consumers always are) and prints each record as one line:
// key<TAB>name=value,...<TAB>value. Used by tests/clients.rs.
//
// usage: node consume.js BOOTSTRAP TOPIC COUNT TIMEOUT_MS
// Exits 0 once COUNT records are printed, 1 on timeout or error. kafkajs
// logs go to stderr, so a decode error there is visible to the test.
'use strict'

const { Kafka, logLevel } = require('kafkajs')

const [bootstrap, topic, countArg, timeoutArg] = process.argv.slice(2)
const count = Number(countArg)
const timeoutMs = Number(timeoutArg)

const kafka = new Kafka({
  clientId: 'client-compat-kafkajs',
  brokers: [bootstrap],
  logLevel: logLevel.WARN,
  logCreator: () => ({ namespace, level, log }) => {
    const { message, ...extra } = log
    console.error(`kafkajs ${level} ${namespace}: ${message} ${JSON.stringify(extra)}`)
  },
})

const text = (b) => (b == null ? '' : b.toString('utf8'))

async function main () {
  const consumer = kafka.consumer({ groupId: `client-compat-${process.pid}-${Date.now()}` })
  let seen = 0
  let finish
  const done = new Promise((resolve) => { finish = resolve })
  const timer = setTimeout(() => finish(false), timeoutMs)
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  await consumer.run({
    eachMessage: async ({ message }) => {
      const headers = Object.entries(message.headers || {})
        .map(([k, v]) => `${k}=${text(Array.isArray(v) ? v[0] : v)}`)
        .join(',')
      process.stdout.write(`${text(message.key)}\t${headers}\t${text(message.value)}\n`)
      seen += 1
      if (seen >= count) finish(true)
    },
  })
  const ok = await done
  clearTimeout(timer)
  await consumer.disconnect()
  if (!ok) {
    console.error(`kafkajs: got ${seen} of ${count} records`)
    process.exit(1)
  }
}

main().catch((e) => {
  console.error(`kafkajs: ${e.stack || e}`)
  process.exit(1)
})
