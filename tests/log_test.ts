/**
 * The log line formatters: one record is one line, whatever a client put in
 * the fields it chooses (user names, user-ids, host names).
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import type { LogLevel, LogRecord } from "@logtape/logtape";
import {
  keptPastCap,
  lineFormatter,
  logTapeFormatter,
  plainLine,
  RateLimitedLog,
} from "../src/log.ts";

/** A session record whose user and target came from a client. */
function sessionRecord(user: string, target: string): LogRecord {
  return {
    category: ["ferry", "session"],
    level: "info",
    message: ["session 1 ", target, ": ok"],
    rawMessage: "session 1 {target}: ok",
    timestamp: Date.UTC(2026, 11, 2),
    properties: { event: "session", user, target, outcome: "ok" },
  };
}

// U+2028 and U+2029 end a line for Python's splitlines() and JavaScript's
// regexps; U+202E and U+2066 reorder what a terminal shows.
const USER = "bob\u2028level=error user=root";
const TARGET = "evil\u2029\u202emoc.elgoog\u2066:80";

Deno.test("json lines: line separators and bidi controls from a client are escaped, and parse back", () => {
  const line = lineFormatter("json")(sessionRecord(USER, TARGET));
  assert.equal(line.trimEnd().split(/\r\n|[\n\r\u2028\u2029\u0085]/).length, 1, line);
  assert.doesNotMatch(line, /[\u202a-\u202e\u2066-\u2069\u200e\u200f]/);
  const parsed = JSON.parse(line);
  assert.equal(parsed.user, USER);
  assert.equal(parsed.target, TARGET);
});

Deno.test("logfmt: line separators and bidi controls from a client are written as \\u escapes", () => {
  const line = lineFormatter("text")(sessionRecord(USER, TARGET));
  assert.equal(line.trimEnd().split(/\r\n|[\n\r\u2028\u2029\u0085]/).length, 1, line);
  assert.doesNotMatch(line, /[\u202a-\u202e\u2066-\u2069\u200e\u200f]/);
  assert.match(line, /bob\\u2028level=error user=root/);
  assert.match(line, /evil\\u2029\\u202emoc\.elgoog\\u2066:80/);
});

Deno.test("invisible format characters from a client are escaped, so a name shows what it holds", () => {
  // Soft hyphen, zero-width space and joiner, BOM, and a tag character
  // (outside the BMP): "loc\u00adalhost" looked like "localhost". U+FFF9,
  // an interlinear annotation anchor, is a format character that Unicode
  // does not call default-ignorable, and is escaped all the same.
  const target = "loc\u00adal\u200bho\u200dst\ufeff\u{e0041}\u3164\ufff9:80"; // U+3164: a Hangul filler
  const json = lineFormatter("json")(sessionRecord("alice", target));
  const text = lineFormatter("text")(sessionRecord("alice", target));
  for (const line of [json, text]) {
    assert.doesNotMatch(line, /[\p{Cf}\p{Default_Ignorable_Code_Point}]/u, line);
    assert.match(line, /loc\\u00adal\\u200bho\\u200dst\\ufeff\\udb40\\udc41\\u3164\\ufff9:80/);
  }
  assert.equal(JSON.parse(json).target, target, "and JSON reads it back");
});

Deno.test("json lines: the message reads as in text lines, values not JSON-quoted", () => {
  const parsed = JSON.parse(lineFormatter("json")(sessionRecord("alice", "example.com:443")));
  assert.equal(parsed.message, "session 1 example.com:443: ok");
  const numbers: LogRecord = {
    ...sessionRecord("alice", "x"),
    message: ["stopped: ", 3, " sessions, ", null, " ", { a: 1 }, ""],
  };
  assert.equal(
    JSON.parse(lineFormatter("json")(numbers)).message,
    'stopped: 3 sessions, null {"a":1}',
  );
});

Deno.test("a line with nothing to escape is left as the formatter made it", () => {
  const record = sessionRecord("alice", "example.com:443");
  const line = lineFormatter("json")(record);
  assert.equal(JSON.parse(line).user, "alice");
  assert.match(lineFormatter("text")(record), /user=alice/);
});

Deno.test("a session line is written by ferry's own formatter, byte for byte as LogTape writes it", () => {
  const record: LogRecord = {
    ...sessionRecord("alice", "example.com:443"),
    message: ["session ", 7, " ", "127.0.0.1:50312", " → ", "example.com:443", ": ", "ok", ""],
    properties: {
      event: "session",
      id: 7,
      client: "127.0.0.1:50312",
      user: null,
      target: "example.com:443",
      outcome: "ok",
      up: 64,
      down: 1_048_576,
      ms: 0.5,
      error: 'a "quoted" \\ value = this',
      empty: "",
      spelt: "null",
      truth: false,
    },
  };
  for (const format of ["text", "json"] as const) {
    const plain = plainLine(record, format);
    assert.notEqual(plain, null, `${format}: the fast path was not taken`);
    assert.equal(plain, logTapeFormatter(format)(record), format);
  }
});

/** Characters each formatter writes as they are, or quotes, or escapes inside quotes. */
const PLAIN_UNITS = [..."aZ09.:-_[]/@%", " ", '"', "\\", "=", "\u2192"]; // U+2192: the arrow of session messages
/** Characters that send a line LogTape's way: beyond ASCII, controls, what ferry escapes. */
const OTHER_UNITS = [
  "\u00e9",
  "\u0085", // C1 control
  "\u007f",
  "\u00ad", // a format character ferry escapes
  "\u2028",
  "\ufffd",
  "\n",
  "\t",
  "\u0000",
  "\u{1f600}",
];
// Mostly strings ferry writes itself, so that the comparison meets both ways.
const text = fc.oneof(
  { arbitrary: fc.string({ unit: fc.constantFrom(...PLAIN_UNITS), maxLength: 12 }), weight: 15 },
  {
    arbitrary: fc.constantFrom("", "null", "true", "false", "undefined", "127.0.0.1:1080"),
    weight: 4,
  },
  {
    arbitrary: fc.string({ unit: fc.constantFrom(...PLAIN_UNITS, ...OTHER_UNITS), maxLength: 12 }),
    weight: 1,
  },
);
const value = fc.oneof(
  { arbitrary: text, weight: 12 },
  { arbitrary: fc.oneof(fc.integer(), fc.double(), fc.boolean(), fc.constant(null)), weight: 7 },
  {
    arbitrary: fc.constantFrom<unknown>(undefined, [1, "a"], { a: 1 }, new Error("boom"), 10n),
    weight: 1,
  },
);
const key = fc.oneof(
  { arbitrary: fc.constantFrom("event", "id", "user", "target", "up", "ms"), weight: 4 },
  {
    arbitrary: fc.string({
      unit: fc.constantFrom(...PLAIN_UNITS, ...OTHER_UNITS),
      minLength: 1,
      maxLength: 6,
    }),
    weight: 1,
  },
);
const record: fc.Arbitrary<LogRecord> = fc.record({
  category: fc.oneof(
    fc.constant(["ferry", "session"]),
    fc.array(text, { minLength: 1, maxLength: 3 }),
  ),
  level: fc.constantFrom<LogLevel>("debug", "info", "warning", "error", "fatal"),
  // text, value, text, …, text
  message: fc.array(fc.tuple(value, text), { maxLength: 4 }).chain((pairs) =>
    text.map((first) => [first, ...pairs.flat()])
  ),
  rawMessage: fc.constant("template"),
  timestamp: fc.integer({ min: 0, max: Date.UTC(9999, 0) }),
  properties: fc.dictionary(key, value, { maxKeys: 8 }),
});

Deno.test("property: every line ferry writes itself is the line LogTape's formatter would write", () => {
  for (const format of ["text", "json"] as const) {
    const logTape = logTapeFormatter(format);
    const written = lineFormatter(format);
    let plain = 0;
    fc.assert(
      fc.property(record, (record) => {
        if (plainLine(record, format) !== null) plain++;
        assert.equal(written(record), logTape(record));
      }),
      { numRuns: 2000 },
    );
    // Not only LogTape's way: the comparison above must have met ferry's own.
    assert.ok(plain > 200, `${format}: only ${plain} of 2000 records took the fast path`);
  }
});

Deno.test("RateLimitedLog: one line per interval, and what it held back is logged once the interval is over", async () => {
  // It used to tell what it held back only on the next line, which might
  // never come: of 30 refusals in a burst, the log showed one.
  const log = new RateLimitedLog(50);
  const lines: { event: number; suppressed: number }[] = [];
  for (let event = 1; event <= 5; event++) {
    log.maybe((suppressed) => lines.push({ event, suppressed }));
  }
  assert.deepEqual(lines, [{ event: 1, suppressed: 0 }]);
  await new Promise((resolve) => setTimeout(resolve, 120));
  assert.deepEqual(lines, [{ event: 1, suppressed: 0 }, { event: 5, suppressed: 3 }]);
  // Every event is accounted for: a line each, plus the counts.
  assert.equal(lines.length + lines.reduce((sum, l) => sum + l.suppressed, 0), 5);
  // The interval is over: the next event goes at once; one right after it is held.
  log.maybe((suppressed) => lines.push({ event: 6, suppressed }));
  log.maybe((suppressed) => lines.push({ event: 7, suppressed }));
  log.maybe((suppressed) => lines.push({ event: 8, suppressed }));
  assert.deepEqual(lines.at(-1), { event: 6, suppressed: 0 });
  log.flush(); // a server stopping: what is held back goes now, not after the interval
  assert.deepEqual(lines.at(-1), { event: 8, suppressed: 1 });
  log.flush(); // nothing held back: nothing to log
  assert.equal(lines.length, 4);
});

/** A logfmt reader as log tools read it: a quoted value has JSON escapes, an unquoted one none. */
function parseLogfmt(line: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const match of line.trimEnd().matchAll(/(\w+)=("(?:[^"\\]|\\.)*"|\S*)/g)) {
    const [, key, value] = match;
    fields[key!] = value!.startsWith('"') ? JSON.parse(value!) : value!;
  }
  return fields;
}

Deno.test("logfmt: a value with U+2028 and one spelling out \\u2028 read back as themselves", () => {
  // Unquoted, the escape read as six plain characters: the same as the user-id
  // that spells them out, so one client could pass for another in the log.
  const format = lineFormatter("text");
  for (const user of ["a\u2028b", "a\\u2028b", "a b\u2028c", "\u202e", "u\u061cv", "plain"]) {
    const line = format(sessionRecord(user, "example.com:443"));
    assert.equal(line.trimEnd().split(/\r\n|[\n\r\u2028\u2029\u0085]/).length, 1, line);
    assert.equal(parseLogfmt(line).user, user, line);
  }
});

Deno.test("RateLimitedLog: an event after a late flush joins the held ones: one line, not two", async () => {
  // With the flush timer late (a busy loop), the next event went out on its
  // own line saying suppressed=0, right before the held ones' line.
  const log = new RateLimitedLog(20);
  const lines: { event: number; suppressed: number }[] = [];
  log.maybe((suppressed) => lines.push({ event: 1, suppressed }));
  log.maybe((suppressed) => lines.push({ event: 2, suppressed })); // held; flush due in 20 ms
  for (const until = performance.now() + 40; performance.now() < until;) {
    // the event loop is busy past the flush's time
  }
  log.maybe((suppressed) => lines.push({ event: 3, suppressed }));
  await new Promise((resolve) => setTimeout(resolve, 50)); // the late timer finds nothing
  assert.deepEqual(lines, [{ event: 1, suppressed: 0 }, { event: 3, suppressed: 1 }]);
});

Deno.test("past the sink's cap, lines about ferry itself are kept and session lines give way", () => {
  const session = sessionRecord("alice", "example.com:80");
  const stopped: LogRecord = { ...session, category: ["ferry", "server"], properties: {} };
  assert.equal(keptPastCap(session), false);
  assert.equal(keptPastCap(stopped), true);
});
