import { configure, getLogger, getStreamSink, jsonLinesFormatter } from "@logtape/logtape";
await configure({
  sinks: { json: getStreamSink(Deno.stderr.writable, { formatter: jsonLinesFormatter, nonBlocking: true }) },
  loggers: [{ category: ["ferry"], lowestLevel: "debug", sinks: ["json"] }, { category: ["logtape","meta"], lowestLevel: "warning", sinks: [] }],
});
const log = getLogger(["ferry", "session"]);
log.info("session {id} {outcome}", { event: "session", id: 1, outcome: "ok", client: "127.0.0.1:5" });
log.info({ event: "listening", listen: "127.0.0.1:1080" });
