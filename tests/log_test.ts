/**
 * The log line formatters: one record is one line, whatever a client put in
 * the fields it chooses (user names, user-ids, host names).
 */
import assert from "node:assert/strict";
import type { LogRecord } from "@logtape/logtape";
import { lineFormatter } from "../src/log.ts";

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
