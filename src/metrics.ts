/**
 * Counters kept for the whole process. They are updated from outside the
 * relay (the server and the session wrap it), and logged at shutdown.
 *
 * @module
 */

/** Process-wide counters. Plain fields: a counter is a number in a hot path. */
export class Metrics {
  accepted = 0;
  rejectedMaxConns = 0;
  rejectedPerIp = 0;
  acceptErrors = 0;
  /**
   * Faults of ferry's own: a session that could not start (its connection
   * closed, with no session line) or whose end failed. Should stay 0.
   */
  internalErrors = 0;
  sessionsOk = 0;
  sessionsFailed = 0;
  bytesUp = 0;
  bytesDown = 0;
  /** Sessions that ended, by outcome. */
  readonly outcomes = new Map<string, number>();

  /** Records the end of one session. */
  sessionEnded(outcome: string, up: number, down: number): void {
    if (outcome === "ok") this.sessionsOk++;
    else this.sessionsFailed++;
    this.outcomes.set(outcome, (this.outcomes.get(outcome) ?? 0) + 1);
    this.bytesUp += up;
    this.bytesDown += down;
  }

  /** A flat snapshot for a log line. */
  snapshot(): Record<string, number> {
    return {
      accepted: this.accepted,
      rejectedMaxConns: this.rejectedMaxConns,
      rejectedPerIp: this.rejectedPerIp,
      acceptErrors: this.acceptErrors,
      internalErrors: this.internalErrors,
      sessionsOk: this.sessionsOk,
      sessionsFailed: this.sessionsFailed,
      bytesUp: this.bytesUp,
      bytesDown: this.bytesDown,
    };
  }
}
