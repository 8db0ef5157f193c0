/**
 * A LogTape sink that keeps records as they come and writes them in batches:
 * every `flushIntervalMs`, or as soon as `batchSize` records wait, they are
 * formatted, joined and handed to `write` as one buffer.
 *
 * LogTape's own non-blocking stream sink also formats off the logging call,
 * but then writes each record on its own through a WritableStream: one write
 * syscall and a handful of promises per line. With a line per session that
 * was most of what logging cost (see BENCHMARKS.md, "ferry (logging on)").
 *
 * Memory is bounded: while a write is stuck (a stderr pipe nobody reads),
 * records beyond `maxPending` are dropped, counted, and reported by one
 * record of their own once writing resumes; records that `keep` says matter
 * more (ferry's lifecycle lines, `stopped` with its totals) are kept up to
 * a batch more. A full pipe on a non-blocking stderr (a parent may leave it
 * so) is the same case: the write is retried until the reader catches up.
 * A write that fails otherwise never throws into the logging call. A reader
 * that has gone (EPIPE) ends writing for good; any other failure (ENOSPC: a
 * full disk until logrotate runs) loses the lines of that batch that had not
 * got out whole, counted as dropped, and writing is tried again a second
 * later.
 *
 * @module
 */
import type { LogRecord, Sink, TextFormatter } from "@logtape/logtape";

/** Options for {@linkcode batchedSink}. */
export interface BatchedSinkOptions {
  /** Turns a record into its line, newline included. */
  readonly formatter: TextFormatter;
  /** Writes some of `bytes`, resolving with how many; `Deno.stderr.write` fits. */
  readonly write: (bytes: Uint8Array) => Promise<number>;
  /** How long a record may wait before its batch is written. */
  readonly flushIntervalMs?: number;
  /** A batch this large is written at once, without waiting for the interval. */
  readonly batchSize?: number;
  /** Records held at most while a write is in progress; more are dropped. */
  readonly maxPending?: number;
  /** Whether a record is kept past `maxPending` (up to `batchSize` more). */
  readonly keep?: (record: LogRecord) => boolean;
  /** How long to wait before writing again after a failed write. */
  readonly retryAfterMs?: number;
}

/** A sink that must be disposed (LogTape's `dispose()` does it) to write its last batch. */
export type BatchedSink = Sink & AsyncDisposable & {
  /** Whether a write of a batch has not returned yet: the stream may be stuck. */
  isWriting(): boolean;
};

const encoder = new TextEncoder();

/** Creates the sink; see the module documentation. */
export function batchedSink(options: BatchedSinkOptions): BatchedSink {
  const { formatter, write } = options;
  const flushIntervalMs = options.flushIntervalMs ?? 50;
  const batchSize = options.batchSize ?? 1000;
  const maxPending = options.maxPending ?? 10 * batchSize;
  const keep = options.keep ?? (() => false);
  const retryAfterMs = options.retryAfterMs ?? 1000;
  let pending: LogRecord[] = [];
  /** Whether a failed write may have cut a line short: the next starts a new one. */
  let lineOpen = false;
  let dropped = 0;
  /** The last failed write's error, if records were dropped for it since the last report. */
  let failure: string | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let writing: Promise<void> | null = null;
  let broken = false;
  let disposed = false;
  /** Bytes of the batch being written that got out: after a failure, whose lines did. */
  let batchWritten = 0;

  const writeAll = async (bytes: Uint8Array) => {
    batchWritten = 0;
    for (let offset = 0, backOffMs = 0; offset < bytes.length;) {
      try {
        offset += await write(bytes.subarray(offset));
        batchWritten = offset;
        backOffMs = 0;
      } catch (error) {
        if (
          !(error instanceof Deno.errors.WouldBlock || error instanceof Deno.errors.Interrupted)
        ) {
          // A line cut short stays open until a write ends it, through any
          // number of failed retries that wrote nothing.
          if (offset > 0) lineOpen = bytes[offset - 1] !== 0x0a;
          throw error;
        }
        // Nothing says when the reader will catch up: poll, from 1 ms to 100.
        backOffMs = Math.min(100, backOffMs * 2 || 1);
        await unrefSleep(backOffMs);
      }
    }
  };

  /**
   * A record's line. A formatter that throws (a bug) must not reject the
   * write loop, whose rejection nothing handles and would end the process:
   * the record becomes a line saying so, or, failing that too, nothing.
   */
  const lineOf = (record: LogRecord): string => {
    try {
      return formatter(record);
    } catch (error) {
      try {
        return formatter(unformattableRecord(record, error));
      } catch {
        return "";
      }
    }
  };

  const formatBatch = (records: readonly LogRecord[], droppedBefore: number): string => {
    let text = lineOpen ? "\n" : "";
    for (const record of records) text += lineOf(record);
    // Records are dropped only once the pending ones fill up, so the report
    // of the drop comes after them.
    if (droppedBefore > 0) text += formatter(droppedRecord(droppedBefore, failure));
    return text;
  };

  // Writes until nothing is pending; flush() runs one such loop at a time.
  const drain = async () => {
    while (pending.length > 0 || dropped > 0) {
      const batch = pending;
      const droppedBefore = dropped;
      pending = [];
      dropped = 0;
      const startsLine = lineOpen; // a newline first, ending a line cut short
      const bytes = encoder.encode(formatBatch(batch, droppedBefore));
      try {
        await writeAll(bytes);
        lineOpen = false;
        if (droppedBefore > 0) failure = null;
      } catch (error) {
        if (isGone(error)) {
          broken = true; // nowhere left to report it
          pending = [];
          return;
        }
        // Records whose lines got out whole before the failure are not lost.
        // (The report of earlier drops is the batch's last line: it never got
        // out if the write failed.)
        const linesOut = Math.max(0, newlines(bytes.subarray(0, batchWritten)) - +startsLine);
        dropped += droppedBefore + batch.length - Math.min(linesOut, batch.length);
        failure = error instanceof Error ? error.message : String(error);
        await unrefSleep(retryAfterMs);
      }
    }
  };

  const flush = () => {
    if (timer !== undefined) {
      clearTimeout(timer);
      timer = undefined;
    }
    if (writing !== null || broken || (pending.length === 0 && dropped === 0)) return;
    // Cleared in a callback, never inside drain(): that always runs after
    // this assignment, even if drain() finished without awaiting.
    writing = drain().finally(() => {
      writing = null;
      armTimer(); // for records that came after the last batch was taken
    });
  };

  const armTimer = () => {
    if (timer !== undefined || writing !== null || pending.length === 0) return;
    const armed = setTimeout(flush, flushIntervalMs);
    Deno.unrefTimer(armed); // logging alone must never keep the process alive
    timer = armed;
  };

  const sink = (record: LogRecord) => {
    if (broken || disposed) return;
    if (
      pending.length >= maxPending && (pending.length >= maxPending + batchSize || !keep(record))
    ) {
      dropped++;
      return;
    }
    pending.push(record);
    if (pending.length >= batchSize) flush();
    else armTimer();
  };

  return Object.assign(sink, {
    isWriting: () => writing !== null,
    async [Symbol.asyncDispose]() {
      disposed = true;
      // flush() does nothing while a write is in progress, and a record may
      // come after a drain took its last batch but before it ended: flush
      // again after every write until nothing is left.
      for (flush(); writing !== null; flush()) await writing;
    },
  });
}

/** The number of newlines in `bytes`. */
function newlines(bytes: Uint8Array): number {
  let count = 0;
  for (let at = bytes.indexOf(0x0a); at >= 0; at = bytes.indexOf(0x0a, at + 1)) count++;
  return count;
}

/** Whether a write failed because nobody reads any more (EPIPE, a closed descriptor). */
function isGone(error: unknown): boolean {
  return error instanceof Deno.errors.BrokenPipe || error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.NotConnected;
}

/** A sleep that alone does not keep the process alive, as logging must not. */
function unrefSleep(ms: number): Promise<void> {
  return new Promise((resolve) => Deno.unrefTimer(setTimeout(resolve, ms)));
}

/** The line that stands for a record the formatter threw on: its event, and the error. */
function unformattableRecord(record: LogRecord, error: unknown): LogRecord {
  const message = `a log record could not be formatted: ${
    error instanceof Error ? error.message : String(error)
  }`;
  return {
    category: record.category,
    level: "error",
    message: [message],
    rawMessage: message,
    timestamp: record.timestamp,
    properties: { event: "log-unformattable", of: String(record.properties.event ?? "") },
  };
}

/** The record that stands for `count` dropped ones, in the sink's own format. */
function droppedRecord(count: number, failure: string | null): LogRecord {
  const message = failure === null
    ? `${count} log records dropped: stderr did not keep up`
    : `${count} log records dropped: writing to stderr failed (${failure})`;
  return {
    category: ["ferry", "log"],
    level: "warning",
    message: [message],
    rawMessage: message,
    timestamp: Date.now(),
    properties: { event: "log-dropped", dropped: count },
  };
}
