/** Unit tests of RFC 1929 credential checking. */
import assert from "node:assert/strict";
import { constantTimeEqual, UserTable } from "../src/auth.ts";

const encoder = new TextEncoder();
const bytes = (...values: number[]) => Uint8Array.from(values);

Deno.test("constantTimeEqual() truth table", () => {
  const table: [Uint8Array, Uint8Array, boolean][] = [
    [bytes(), bytes(), true],
    [bytes(1, 2, 3), bytes(1, 2, 3), true],
    [bytes(0), bytes(0), true],
    [bytes(1, 2, 3), bytes(1, 2, 4), false],
    [bytes(0, 2, 3), bytes(1, 2, 3), false],
    [bytes(255), bytes(254), false],
    // One a prefix of the other, both ways.
    [bytes(1, 2), bytes(1, 2, 3), false],
    [bytes(1, 2, 3), bytes(1, 2), false],
    [bytes(), bytes(1), false],
    // Padding with zeros must not make a shorter string equal.
    [bytes(), bytes(0), false],
    [bytes(7), bytes(7, 0), false],
    [bytes(7, 0), bytes(7), false],
    // Lengths whose XOR hides nothing: 1 ^ 3 = 2, still non-zero.
    [bytes(9), bytes(9, 0, 0), false],
    [encoder.encode("secret"), encoder.encode("secret"), true],
    [encoder.encode("secret"), encoder.encode("Secret"), false],
  ];
  for (const [a, b, expected] of table) {
    assert.equal(constantTimeEqual(a, b), expected, `[${a}] vs [${b}]`);
  }
});

Deno.test("constantTimeEqual() compares byte views, not their underlying buffers", () => {
  const backing = bytes(9, 1, 2, 3, 9);
  assert.equal(constantTimeEqual(backing.subarray(1, 4), bytes(1, 2, 3)), true);
  assert.equal(constantTimeEqual(backing.subarray(0, 3), bytes(1, 2, 3)), false);
});

Deno.test("UserTable.required is true exactly when users are configured", () => {
  assert.equal(new UserTable(new Map()).required, false);
  assert.equal(new UserTable(new Map([["alice", encoder.encode("pw")]])).required, true);
});

Deno.test("UserTable.verify() accepts the right password only", () => {
  const users = new UserTable(
    new Map([
      ["alice", encoder.encode("correct horse")],
      ["bob", encoder.encode("b:o:b")],
    ]),
  );
  assert.equal(users.verify("alice", encoder.encode("correct horse")), true);
  assert.equal(users.verify("bob", encoder.encode("b:o:b")), true);
  assert.equal(users.verify("alice", encoder.encode("correct horsE")), false);
  assert.equal(users.verify("alice", encoder.encode("correct hors")), false);
  assert.equal(users.verify("alice", encoder.encode("correct horse ")), false);
  assert.equal(users.verify("alice", new Uint8Array(0)), false);
  // Another user's password is not this user's.
  assert.equal(users.verify("alice", encoder.encode("b:o:b")), false);
  // Names are exact: no case folding, no trimming.
  assert.equal(users.verify("Alice", encoder.encode("correct horse")), false);
  assert.equal(users.verify("alice ", encoder.encode("correct horse")), false);
});

Deno.test("UserTable.verify() rejects unknown users, even with the decoy's bytes", () => {
  const users = new UserTable(new Map([["alice", encoder.encode("pw")]]));
  assert.equal(users.verify("mallory", encoder.encode("pw")), false);
  assert.equal(users.verify("", new Uint8Array(0)), false);
  assert.equal(
    users.verify("mallory", encoder.encode("ferry-decoy-password-never-matches\u0000")),
    false,
  );
  // With no users at all, nothing verifies.
  assert.equal(new UserTable(new Map()).verify("alice", encoder.encode("pw")), false);
});

Deno.test("UserTable.verify() compares non-ASCII passwords as raw bytes", () => {
  const utf8 = encoder.encode("pässwörd🔑");
  const users = new UserTable(new Map([["José", utf8]]));
  assert.equal(users.verify("José", utf8.slice()), true);
  // The same text in Latin-1 is different bytes.
  const latin1 = Uint8Array.from("pässwörd", (c) => c.charCodeAt(0));
  assert.equal(users.verify("José", latin1), false);
  // A password that is not valid UTF-8 at all can still match byte for byte.
  const raw = bytes(0xff, 0xfe, 0x00, 0x80);
  const rawUsers = new UserTable(new Map([["raw", raw]]));
  assert.equal(rawUsers.verify("raw", bytes(0xff, 0xfe, 0x00, 0x80)), true);
  assert.equal(rawUsers.verify("raw", bytes(0xff, 0xfe, 0x00, 0x81)), false);
  // Names are compared as text: the decomposed "José" is another user.
  assert.equal(users.verify("Jose\u0301", utf8), false);
});
