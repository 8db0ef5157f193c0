/**
 * The only place that configures logging. Records go to stderr through a
 * batching sink (src/log_sink.ts): formatting and writing happen off the
 * session's path, one write per batch; `text` is logfmt, `json` one object a
 * line. Both flatten a record's properties into the line so tools can filter on
 * `event`, `outcome` and friends.
 *
 * @module
 */
import {
  configure,
  dispose,
  getJsonLinesFormatter,
  getLogfmtFormatter,
  getLogger,
  type Logger,
  type LogLevel as LogTapeLevel,
  type LogRecord,
  type TextFormatter,
} from "@logtape/logtape";
import type { LogFormat, LogLevel } from "./config.ts";
import { type BatchedSink, batchedSink } from "./log_sink.ts";

const LEVELS: Readonly<Record<LogLevel, LogTapeLevel>> = {
  debug: "debug",
  info: "info",
  warn: "warning",
  error: "error",
};

/** Logger for the listener, limits and lifecycle. */
export const serverLog: Logger = getLogger(["ferry", "server"]);
/** Logger for the one line each session writes when it ends (see {@linkcode logSession}). */
export const sessionLog: Logger = getLogger(["ferry", "session"]);

/** Options for {@linkcode setupLogging}. */
export interface LoggingOptions {
  readonly level: LogLevel;
  readonly format: LogFormat;
}

/** The formatter logging was set up with, for {@linkcode writeNow}. */
let formatterInUse: TextFormatter | null = null;
/** The sink logging was set up with, for {@linkcode writeNow}. */
let sinkInUse: BatchedSink | null = null;

const encoder = new TextEncoder();

/**
 * Which records the sink keeps once its cap is reached while stderr is
 * stuck: session lines give way to the lines about ferry itself (listening,
 * shutting down, `stopped` with its totals).
 */
export function keptPastCap(record: LogRecord): boolean {
  return record.category[1] !== "session";
}

/**
 * Logs a session's line at info level. `message` is split as LogTape splits
 * a template: text, value, text, …, text. When {@linkcode setupLogging} made
 * ferry's sink, the record goes straight into it: LogTape's own dispatch
 * (context lookups, parsing the template, a record of getters) took about
 * 15 µs of CPU a line under load (8% of the sessions a second with every
 * one logged), for routing that is fixed at start. Else
 * (tests that configure LogTape themselves) through {@linkcode sessionLog}.
 * The caller has checked that session lines are logged at all.
 */
export function logSession(
  message: readonly unknown[],
  rawMessage: string,
  properties: Record<string, unknown>,
): void {
  const timestamp = Date.now();
  if (sinkInUse !== null) {
    sinkInUse({
      category: sessionLog.category,
      level: "info",
      message,
      rawMessage,
      timestamp,
      properties,
    });
  } else {
    sessionLog.emit({ level: "info", message, rawMessage, timestamp, properties });
  }
}

/** Routes ferry's loggers to stderr. Call {@linkcode stopLogging} before exit to flush. */
export async function setupLogging(options: LoggingOptions): Promise<void> {
  const formatter = lineFormatter(options.format);
  formatterInUse = formatter;
  disposal = null;
  sinkInUse = batchedSink({
    formatter,
    write: (bytes) => Deno.stderr.write(bytes),
    flushIntervalMs: 50,
    batchSize: 1000,
    keep: keptPastCap,
  });
  await configure({
    reset: true,
    sinks: { stderr: sinkInUse },
    loggers: [
      { category: ["ferry"], lowestLevel: LEVELS[options.level], sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}

/**
 * Characters some readers take as line breaks (U+2028, U+2029: Python's
 * splitlines(), JavaScript's regexps), the format characters (Unicode's Cf:
 * bidi controls, which reorder how a line is displayed, soft hyphens,
 * zero-width spaces and joiners, tag characters), and the rest of what
 * Unicode says may be shown as nothing (Default_Ignorable_Code_Point: Hangul
 * fillers, variation selectors). Clients choose user names and host names,
 * and LogTape escapes only the C0 and C1 controls, so a user-id holding
 * U+2028 could make one line look like two, and `loc\u00adalhost` or
 * `\u3164admin` read as `localhost` or ` admin`.
 */
const UNSAFE = /[\u2028\u2029\p{Cf}\p{Default_Ignorable_Code_Point}]/gu;
const HAS_UNSAFE = new RegExp(UNSAFE.source, "u");

/**
 * `\uXXXX` for each unsafe character, a pair of them for one beyond the BMP
 * (a tag character): an escape in JSON, and in a quoted logfmt value.
 */
function escapeUnsafe(line: string): string {
  // With no match, replace() returns the line itself.
  return line.replace(UNSAFE, (c) => {
    let escaped = "";
    for (let i = 0; i < c.length; i++) {
      escaped += `\\u${c.charCodeAt(i).toString(16).padStart(4, "0")}`;
    }
    return escaped;
  });
}

/**
 * Puts in quotes every unquoted logfmt value that holds an unsafe character,
 * so that {@linkcode escapeUnsafe}'s `\u2028` lands inside quotes, where
 * logfmt reads it as an escape. Unquoted, it read as six plain characters,
 * the same as a client's user-id that spelt them out (logged `"a\\u2028b"`).
 * LogTape quotes any value with a space, quote or backslash, so an unquoted
 * one has none and can be wrapped as it is.
 */
export function quoteUnsafeValues(line: string): string {
  if (!HAS_UNSAFE.test(line)) return line;
  let out = "";
  let inQuotes = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (inQuotes) {
      out += c;
      if (c === "\\") out += line[++i] ?? "";
      else if (c === '"') inQuotes = false;
      continue;
    }
    if (c === '"') inQuotes = true;
    if (c !== "=" || line[i + 1] === '"') {
      out += c;
      continue;
    }
    let end = i + 1;
    while (end < line.length && line[end] !== " " && line[end] !== "\n") end++;
    const value = line.slice(i + 1, end);
    out += HAS_UNSAFE.test(value) ? `="${value}"` : `=${value}`;
    i = end - 1;
  }
  return out;
}

/**
 * The record with its message rendered as text lines show it. LogTape's JSON
 * formatter writes each string value into the message JSON-quoted
 * (`listening on \"127.0.0.1:1080\"`); the values are in their own fields anyway.
 */
function withPlainMessage(record: LogRecord): LogRecord {
  const parts = record.message;
  if (parts.length === 1) return record;
  let text = "";
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    text += typeof part === "string"
      ? part
      : part !== null && typeof part === "object"
      ? JSON.stringify(part)
      : String(part);
  }
  return { ...record, message: [text] };
}

/**
 * The formatter of one log line, properties flattened into it, in `format`.
 *
 * A record whose values are all plain (see {@linkcode plainLine}) is written
 * by ferry itself, byte for byte as LogTape's formatters and the escaping
 * above would write it: LogTape's logfmt looks at each value a character at a
 * time, and its JSON passes each through a replacer, 6.3 and 4.2 µs for a
 * session line here against 1.7 and 1.8. Every session's line is formatted:
 * `bench/side_by_side.ts --logging` gave 3.5% more sessions a second in
 * text, 3.2% in JSON. Anything else (a client's name beyond printable ASCII,
 * an Error) takes LogTape's way.
 */
export function lineFormatter(format: LogFormat): TextFormatter {
  const logTape = logTapeFormatter(format);
  return (record) => plainLine(record, format) ?? logTape(record);
}

/** LogTape's formatter for `format`, with ferry's escaping: what every line must read as. */
export function logTapeFormatter(format: LogFormat): TextFormatter {
  if (format === "json") {
    const json = getJsonLinesFormatter({ properties: "flatten", message: "rendered" });
    return (record) => escapeUnsafe(json(withPlainMessage(record)));
  }
  const logfmt = getLogfmtFormatter({ properties: "flatten", message: "rendered" });
  return (record) => escapeUnsafe(quoteUnsafeValues(logfmt(record)));
}

/**
 * What both formats write as it is, and nothing above escapes: printable
 * ASCII and the arrow of session messages. (LogTape escapes the C0 and C1
 * controls and DEL; {@linkcode UNSAFE} holds no character here.)
 */
const PLAIN = /^[\x20-\x7e\u2192]*$/;
/** A plain logfmt value LogTape leaves unquoted: no space, `"`, `=` or `\`. */
const BARE = /^[!#-<>-[\]-~\u2192]+$/;
/** A logfmt key LogTape writes as it is: printable ASCII but `"`, `%` and `=`. */
const PLAIN_KEY = /^[!#$&-<>-~]+$/;
/** Keys found plain already: ferry's own few, so a line need not test them again. */
const plainKeys = new Set<string>();
/** Words LogTape quotes as logfmt strings, lest they read as a literal. */
const LITERALS = new Set(["null", "undefined", "true", "false"]);

/**
 * `record` as a line in `format`, or null when it is not plain: a string
 * beyond {@linkcode PLAIN}, or a value other than a string, number, boolean
 * or null.
 */
export function plainLine(record: LogRecord, format: LogFormat): string | null {
  const message = plainMessage(record.message);
  if (message === null) return null;
  const time = isoTime(record.timestamp);
  const logger = record.category.join(".");
  const properties = record.properties;
  if (format === "json") {
    for (const key in properties) {
      if (!isPrimitive(properties[key])) return null;
    }
    const level = record.level === "warning" ? "WARN" : record.level.toUpperCase();
    // The object LogTape's formatter builds, so the same keys in the same
    // order. JSON.stringify escapes the ASCII that needs it; one test of the
    // whole line then finds anything beyond ASCII that might need more.
    const line = JSON.stringify({ "@timestamp": time, level, message, logger, ...properties });
    return PLAIN.test(line) ? line + "\n" : null;
  }
  const loggerValue = logfmtString(logger);
  const messageValue = logfmtString(message);
  if (loggerValue === null || messageValue === null) return null;
  let line = `time=${time} level=${record.level} logger=${loggerValue} msg=${messageValue}`;
  for (const key in properties) {
    if (!Object.hasOwn(properties, key)) continue;
    if (!plainKeys.has(key)) {
      if (!PLAIN_KEY.test(key)) return null;
      if (plainKeys.size < 256) plainKeys.add(key);
    }
    const value = properties[key];
    // String() spells a number, boolean or null in ASCII that needs no quotes.
    const text = typeof value === "string"
      ? logfmtString(value)
      : isPrimitive(value)
      ? String(value)
      : null;
    if (text === null) return null;
    line += ` ${key}=${text}`;
  }
  return line + "\n";
}

/** Whether `value` is a string, number, boolean or null: what JSON and logfmt write alike. */
function isPrimitive(value: unknown): boolean {
  const type = typeof value;
  return type === "string" || type === "number" || type === "boolean" || value === null;
}

/** The message as both formats render it (text, value, text, …), or null if a part is not primitive. */
function plainMessage(parts: readonly unknown[]): string | null {
  let text = "";
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    // The template's own text is a string; a value may be any primitive.
    if (i % 2 === 0 ? typeof part !== "string" : !isPrimitive(part)) return null;
    text += String(part);
  }
  return text;
}

/** A string as LogTape's logfmt writes it, when it is {@linkcode PLAIN}; else null. */
function logfmtString(text: string): string | null {
  if (BARE.test(text)) return LITERALS.has(text) ? `"${text}"` : text;
  if (!PLAIN.test(text)) return null;
  return `"${text.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`;
}

/** The last timestamp formatted: lines under load share their millisecond. */
let lastTimestamp = NaN;
let lastTime = "";

/** `timestamp` as LogTape writes it (RFC 3339 in UTC): 0.5 µs a line otherwise. */
function isoTime(timestamp: number): string {
  if (timestamp !== lastTimestamp) {
    lastTime = new Date(timestamp).toISOString();
    lastTimestamp = timestamp;
  }
  return lastTime;
}

/**
 * How long the last lines may take to reach stderr at exit. A reader that
 * has stopped (a hung log shipper, a paused `| less`) would otherwise keep
 * ferry from ever exiting after a signal.
 */
const FINAL_FLUSH_MS = 2000;

/**
 * The one disposal of LogTape's configuration, once begun. A second signal
 * stops logging while the drain goes on, and the drain may then end and stop
 * it too; LogTape's dispose() throws while another is under way, and that
 * error, uncaught, ended ferry with status 1 instead of the signal's (with
 * stderr stuck, it hung ferry for good writing its report there).
 */
let disposal: Promise<void> | null = null;

/**
 * Flushes pending records and releases stderr, giving up after `withinMs`.
 * Callers that overlap wait for the same flush.
 */
export async function stopLogging(withinMs = FINAL_FLUSH_MS): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const gaveUp = new Promise<void>((resolve) => timer = setTimeout(resolve, withinMs));
  disposal ??= dispose();
  await Promise.race([disposal, gaveUp]);
  clearTimeout(timer);
}

/**
 * Writes one line of ferry's server log to stderr now, in the format logging
 * was set up with, past the batches: for a process about to exit without
 * flushing them. Resolves once it is written or cannot be (best effort: a
 * line that cannot be written is lost).
 *
 * Written at once (`writeSync`) unless a batch's write has not returned:
 * then stderr may be a full pipe nobody reads (a stuck log shipper), and
 * `writeSync` held the whole process, every session with it, until someone
 * read it. So then the line is written from Deno's own thread, and the
 * caller bounds the wait. Not always so: that thread's round trip let Deno's
 * SIGUSR1 inspector open before ferry had exited, in 5 runs of 20.
 */
export async function writeNow(
  level: LogTapeLevel,
  message: string,
  properties: Record<string, unknown>,
): Promise<void> {
  if (formatterInUse === null) return;
  const mayBlock = sinkInUse?.isWriting() ?? false;
  const line = encoder.encode(formatterInUse({
    category: ["ferry", "server"],
    level,
    message: [message],
    rawMessage: message,
    timestamp: Date.now(),
    properties,
  }));
  try {
    for (let offset = 0; offset < line.length;) {
      const rest = line.subarray(offset);
      offset += mayBlock ? await Deno.stderr.write(rest) : Deno.stderr.writeSync(rest);
    }
  } catch {
    // Nowhere to say it.
  }
}

/**
 * Lets a message through at most once per `intervalMs`, so a storm of
 * identical events (EMFILE on every accept) costs one line a second instead
 * of a flood. What it holds back is not lost: once the interval is over, the
 * latest event held back is logged with how many more there were, so the
 * lines' events plus their `suppressed` counts add up to every event.
 */
export class RateLimitedLog {
  #last = -Infinity;
  /** Events held back since the last line. */
  #held = 0;
  /** The latest of them, logged when the interval is over. */
  #latest: ((suppressed: number) => void) | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #intervalMs: number;

  constructor(intervalMs = 1000) {
    this.#intervalMs = intervalMs;
  }

  /** Calls `emit` with the number of events held back before this one, or holds it back. */
  maybe(emit: (suppressed: number) => void): void {
    const now = performance.now();
    const intervalOver = now - this.#last >= this.#intervalMs;
    if (intervalOver && this.#latest === null) {
      this.#last = now;
      return emit(0);
    }
    this.#held++;
    this.#latest = emit;
    // Over, with events held: their flush is due but late (a busy event loop),
    // and one line tells of them all, this one included.
    if (intervalOver) return this.flush();
    if (this.#timer === undefined) {
      this.#timer = setTimeout(() => this.flush(), this.#last + this.#intervalMs - now);
      Deno.unrefTimer(this.#timer);
    }
  }

  /** Logs the latest event held back, if any, now (a server stopping calls this). */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const latest = this.#latest;
    if (latest === null) return;
    const suppressed = this.#held - 1;
    this.#latest = null;
    this.#held = 0;
    this.#last = performance.now();
    latest(suppressed);
  }
}
