/**
 * RFC 1929 credentials, checked in constant time so a client cannot learn a
 * password byte by byte from how long a failure takes.
 *
 * @module
 */

const encoder = new TextEncoder();

/** Compares two byte strings in time that depends only on their lengths' maximum. */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  const length = Math.max(a.length, b.length);
  let difference = a.length ^ b.length;
  for (let i = 0; i < length; i++) difference |= (a[i] ?? 0) ^ (b[i] ?? 0);
  return difference === 0;
}

/** The configured users. With none, authentication is off. */
export class UserTable {
  readonly #passwords: ReadonlyMap<string, Uint8Array>;
  /** Compared against when the name is unknown, so that case costs the same. */
  readonly #decoy = encoder.encode("ferry-decoy-password-never-matches\u0000");

  constructor(users: ReadonlyMap<string, Uint8Array>) {
    this.#passwords = users;
  }

  /** Whether clients must authenticate. */
  get required(): boolean {
    return this.#passwords.size > 0;
  }

  /** Checks a user name (UTF-8 text) and password (raw bytes). */
  verify(username: string, password: Uint8Array): boolean {
    const expected = this.#passwords.get(username);
    const matches = constantTimeEqual(expected ?? this.#decoy, password);
    return expected !== undefined && matches;
  }
}
