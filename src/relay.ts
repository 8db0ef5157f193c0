/**
 * The byte relay: two directional copy loops raced under one AbortController.
 *
 * Each loop is `read(buf)` / `write()` on the connections themselves, not
 * `readable.pipeTo(writable)`: Deno closes the whole connection when a
 * `readable` reaches EOF, which would turn a client's half-close (FIN) into a
 * truncated response, and the loop relays about twice as fast.
 *
 * EOF on one side becomes `closeWrite()` (shutdown SHUT_WR) on the other and
 * the other direction keeps flowing. Any error aborts the controller; whoever
 * owns the controller closes both sockets, which ends the pending reads. The
 * relay never closes a socket itself and knows nothing of SOCKS.
 *
 * Except, when the owner asks (`onTargetFailure`), an error of the target's:
 * closing the client's socket with its upload unread would send a reset, and
 * the client's kernel would throw away what the relay had already sent it,
 * such as the error response a server sends before it stops reading a large
 * upload. So the client gets what was read from the target and a FIN, as if
 * the target had closed, and its upload is read and dropped until it closes;
 * the owner bounds how long that may take.
 *
 * @module
 */

import { GrownBuffers } from "./grown_buffers.ts";

/** What the relay needs of a connection: a TCP connection, or a wrapper around one. */
export type RelayEnd = Pick<Deno.TcpConn, "read" | "write" | "closeWrite">;

/** Options for {@linkcode relay}. */
export interface RelayOptions {
  /** Aborting ends both directions; the relay aborts it on the first error. */
  readonly controller: AbortController;
  /** Called on every read that carried bytes: the idle clock's heartbeat. */
  readonly onActivity: () => void;
  /**
   * Called once when the target fails (reset, or gone while we write): the
   * relay then ends towards the client gently instead of aborting (see the
   * module's notes), and the owner should abort it if that takes too long.
   * Without it, a target's error aborts the relay like any other.
   */
  readonly onTargetFailure?: (error: unknown) => void;
  /**
   * Called when both directions have ended cleanly, in place of the last
   * `closeWrite()`: the owner closes both sockets there and then.
   */
  readonly onEnd?: () => void;
  /** First read buffer size; small, because every idle session holds two pending reads. */
  readonly initialBufferSize?: number;
  /**
   * The first read buffers, client → target then target → client, in place of
   * two of `initialBufferSize`: a session can carve them out of one allocation
   * it already has (see ProxySession). The relay owns them from now on.
   */
  readonly initialBuffers?: readonly [Uint8Array<ArrayBuffer>, Uint8Array<ArrayBuffer>];
  /**
   * Bytes for the target ahead of anything read from the client: those the
   * client sent with its handshake. Written by the relay, so that a target
   * already gone when they are written fails as any write to it does (see
   * `onTargetFailure`), and the client still gets what the target sent.
   */
  readonly early?: Uint8Array;
  /** Largest read buffer a busy direction grows to. */
  readonly maxBufferSize?: number;
  /** Where grown buffers come from and go back to; the process's shared ones unless given. */
  readonly grown?: GrownBuffers;
}

/**
 * Bytes of grown read buffers that all relays together may hold. A busy
 * direction grows to two buffers of 4 MiB, and a peer that stops reading
 * keeps them: 300 such sessions held 828 MB. With the budget spent, a
 * direction grows no further and writes each read before the next.
 */
export const BUFFER_BUDGET_BYTES = 256 * 1048576;

/**
 * The last eighth of the budget goes only in buffers of up to 64 KiB (see
 * GrownBuffers' `reserve`): room for 256 bulk directions to leave 1 KiB
 * reads behind once stalled sessions hold the rest. 64 KiB reads carried a
 * download at about 1,400 MiB/s here (the bare relay's row in BENCHMARKS.md),
 * 1 KiB reads at about a tenth of that.
 */
const sharedGrownBuffers = new GrownBuffers(BUFFER_BUDGET_BYTES, BUFFER_BUDGET_BYTES / 8, 65536);

/** Bytes carried each way. `up` is client → target. */
export interface RelayTotals {
  up: number;
  down: number;
}

/** The size of each direction's first read buffer, unless the options say otherwise. */
export const FIRST_BUFFER_SIZE = 1024;
/**
 * 4 MiB: on this kernel each read and write costs far more than the copy, and
 * a one-stream download measured 2,074 MiB/s with 1 MiB, 2,279 with 2 MiB,
 * 2,420 with 4 MiB and 2,472 with 8 MiB (direct: 3,395). A busy direction
 * holds at most two buffers of this size.
 */
const DEFAULT_MAX_BUFFER = 4 * 1048576;

/**
 * Relays between `client` and `target` until both directions have ended or
 * the controller is aborted. Resolves with the byte totals either way; the
 * controller's signal says whether it ended cleanly.
 */
export async function relay(
  client: RelayEnd,
  target: RelayEnd,
  options: RelayOptions,
): Promise<RelayTotals> {
  const totals: RelayTotals = { up: 0, down: 0 };
  const initial = options.initialBufferSize ?? FIRST_BUFFER_SIZE;
  const max = options.maxBufferSize ?? DEFAULT_MAX_BUFFER;
  const { controller, onActivity, onEnd, onTargetFailure } = options;
  const grown = options.grown ?? sharedGrownBuffers;
  let open = 2; // directions still copying
  const fail = (error: unknown) => {
    if (!controller.signal.aborted) controller.abort(error);
  };
  let targetFailed = false;
  /** Whether a target's `error` is to be ended gently (told to the owner once) rather than aborting. */
  const gentle = (error: unknown): boolean => {
    if (!onTargetFailure || controller.signal.aborted) return false;
    if (!targetFailed) {
      targetFailed = true;
      onTargetFailure(error);
    }
    return true;
  };
  /** A write's error towards the target may be ended gently; any other aborts. */
  const failWritingTarget = (error: unknown) => gentle(error) || fail(error);
  /**
   * After the target failed, one direction ends as if the target had closed:
   * up, the client's upload is read and dropped until it closes; down, the
   * write in flight to the client finishes and the FIN follows it.
   */
  const endGently = async (
    client: RelayEnd,
    up: boolean,
    scratch: Uint8Array,
    inFlight: Promise<void> | null,
  ) => {
    try {
      if (up) {
        while ((await client.read(scratch)) !== null) { /* dropped: the target is gone */ }
      } else if (inFlight) {
        await inFlight;
      }
      if (--open > 0 || !onEnd) {
        if (!up) await client.closeWrite();
      } else {
        onEnd();
      }
    } catch (error) {
      fail(error);
    }
  };
  const copy = async (
    from: RelayEnd,
    to: RelayEnd,
    direction: keyof RelayTotals,
    first: Uint8Array<ArrayBuffer> | undefined,
    early?: Uint8Array,
  ) => {
    // Small reads are written before the next read: one buffer, as an idle
    // session should cost. A read that fills its buffer means a bulk transfer:
    // its write is left in flight while the next read fills a second buffer,
    // so both sockets stay busy (one write at a time keeps the order).
    const towardsTarget = direction === "up";
    let reading = true; // whether an error now is the read's or a write's
    let ended = false; // whether this direction is counted out of `open`
    let buffer = first ?? new Uint8Array(initial);
    let spare: Uint8Array<ArrayBuffer> | null = null;
    let flying: Uint8Array<ArrayBuffer> | null = null;
    let inFlight: Promise<void> | null = null;
    let grew = false; // whether this direction took a buffer from `grown`
    // Bytes the other side's kernel took: what was read but never written
    // (an aborted session) is not carried, so the log line matches what the
    // far end can receive.
    let carried = 0;
    const progress = (written: number) => {
      carried += written;
      onActivity();
    };
    try {
      // Before the first read: they may sit in `buffer` (see RelayOptions.initialBuffers).
      if (early !== undefined && early.length > 0) {
        reading = false;
        await writeAll(to, early, progress);
      }
      for (;;) {
        reading = true;
        const n = await from.read(buffer);
        reading = false;
        if (n === null) break;
        // Once the target has failed, what the client still sends is only
        // dropped (endGently): no reason to wait longer for its close.
        if (!(towardsTarget && targetFailed)) onActivity();
        if (inFlight) {
          await inFlight;
          spare = flying;
          inFlight = flying = null;
        }
        if (n < buffer.length) {
          // writeAll() inlined: this is every small message's path.
          let written = await to.write(buffer.subarray(0, n));
          carried += written;
          while (written < n) {
            onActivity(); // bytes moved: a slow reader is not an idle one
            const more = await to.write(buffer.subarray(written, n));
            carried += more;
            written += more;
          }
          continue;
        }
        flying = buffer;
        // Draining a big buffer into a slow reader can outlast the idle
        // timeout, so every write that moves bytes counts as activity.
        inFlight = writeAll(to, buffer.subarray(0, n), progress);
        // A failed write ends the relay even while a read is pending.
        inFlight.catch(towardsTarget ? failWritingTarget : fail);
        const wanted = Math.min(max, buffer.length * 4);
        const taken = spare !== null && spare.length >= wanted ? null : grown.take(wanted);
        if (taken !== null) {
          if (spare !== null) grown.give(spare); // outgrown
          buffer = taken;
          grew = true;
        } else if (spare !== null) {
          buffer = spare; // big enough, or the budget is spent: no bigger
        } else {
          // The budget is spent: one buffer, written before the next read.
          await inFlight;
          buffer = flying;
          inFlight = flying = null;
        }
        spare = null;
      }
      if (inFlight) await inFlight;
      // Carry the FIN on. When the other direction has ended already and the
      // owner closes both sockets at once (onEnd), close() sends that FIN:
      // Deno's close() makes the shutdown(SHUT_WR) itself (tokio shuts a
      // dropped write half down; strace shows it), so closeWrite() first
      // would only add an op and an await.
      ended = true;
      if (--open > 0 || !onEnd) await to.closeWrite();
      else onEnd();
    } catch (error) {
      // The target's error: a read from it (down), or a write to it (up).
      const targetsError = reading !== towardsTarget;
      if (!targetsError || !gentle(error)) fail(error);
      // Counted out already (the client's FIN came, and passing it on
      // failed): the other direction ends the relay, once the client has the
      // whole answer.
      else if (!ended) await endGently(towardsTarget ? from : to, towardsTarget, buffer, inFlight);
    } finally {
      totals[direction] = carried;
      // Back to the grown buffers once nothing uses them: a write still in
      // flight (a failed session) holds its buffer until it settles. Nothing
      // to do for a direction that never grew: nearly every short session.
      if (grew) {
        if (buffer !== flying) grown.give(buffer);
        if (spare !== null && spare !== flying) grown.give(spare);
        if (flying !== null) {
          const held = flying;
          const giveBack = () => grown.give(held);
          if (inFlight === null) giveBack();
          else inFlight.then(giveBack, giveBack);
        }
      }
    }
  };
  const buffers = options.initialBuffers;
  await Promise.all([
    copy(client, target, "up", buffers?.[0], options.early),
    copy(target, client, "down", buffers?.[1]),
  ]);
  return totals;
}

/**
 * Writes all of `bytes`; `conn.write` may take only part of them. Calls
 * `onProgress`, if given, after every write, with the bytes that write took.
 * A promise chain rather than an async function: nearly every call is one
 * whole write, and this is on every session's path.
 */
export function writeAll(
  conn: Pick<Deno.Conn, "write">,
  bytes: Uint8Array,
  onProgress?: (written: number) => void,
): Promise<void> {
  if (bytes.length === 0) return Promise.resolve();
  return conn.write(bytes).then((written) => {
    onProgress?.(written);
    return written < bytes.length ? writeAll(conn, bytes.subarray(written), onProgress) : undefined;
  });
}
