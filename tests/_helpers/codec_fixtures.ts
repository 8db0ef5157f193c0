/**
 * What the codec tests share (tests/protocol_socks4_test.ts,
 * tests/protocol_socks5_test.ts, tests/protocol_property_test.ts): byte
 * builders, the shapes of fixtures, and the checks every fixture gets, split
 * at every offset and followed by pipelined bytes.
 */
import assert from "node:assert/strict";
import {
  type Decoded,
  MORE,
  ProtocolError,
  type ProtocolErrorCode,
} from "../../src/protocol/decoded.ts";
import { concat as concatAll } from "./socks_client.ts";

export type Decoder<T> = (bytes: Uint8Array) => Decoded<T>;

const encoder = new TextEncoder();

/** ASCII/UTF-8 bytes of `text`, to spread into fixtures. */
export function ascii(text: string): Uint8Array {
  return encoder.encode(text);
}

/** `n` copies of `byte`. */
export function filled(n: number, byte: number): Uint8Array {
  return new Uint8Array(n).fill(byte);
}

/** The parts, one after the other: socks_client's `concat`, spread for fixtures. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  return concatAll(parts);
}

/** A message that decodes to `value`. */
export interface OkFixture<T> {
  readonly name: string;
  readonly bytes: Uint8Array;
  readonly value: T;
}

/** A malformed message, and the error it must be refused with. */
export interface ErrorFixture {
  readonly name?: string;
  readonly bytes: Uint8Array;
  /** Length of the shortest prefix that holds the offending byte. */
  readonly throwsFrom: number;
  readonly code: ProtocolErrorCode;
  readonly reply: number | null;
}

/** A validator for `assert.throws` checking the error's class, name, code and reply. */
export function protocolError(code: ProtocolErrorCode, reply: number | null) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof ProtocolError, `expected ProtocolError, got ${error}`);
    assert.equal(error.code, code);
    assert.equal(error.reply, reply);
    assert.equal(error.name, "ProtocolError");
    return true;
  };
}

/**
 * The two checks every fixture gets, with `trailing` as the bytes a client
 * may pipeline after the message (each protocol has its own).
 */
export function fixtureChecks(trailing: Uint8Array) {
  return {
    /**
     * Every strict prefix answers `more`; the whole fixture answers `ok` with
     * every byte consumed; the fixture followed by other bytes leaves them alone.
     */
    assertDecodesIncrementally<T>(decode: Decoder<T>, bytes: Uint8Array, value: T): void {
      for (let end = 0; end < bytes.length; end++) {
        assert.deepEqual(
          decode(bytes.subarray(0, end)),
          MORE,
          `prefix of ${end} of ${bytes.length} bytes`,
        );
      }
      assert.deepEqual(decode(bytes), { kind: "ok", value, consumed: bytes.length });
      assert.deepEqual(decode(concat(bytes, trailing)), {
        kind: "ok",
        value,
        consumed: bytes.length,
      });
    },

    /** Prefixes without the bad byte answer `more`; every longer one throws. */
    assertRejectsFrom(decode: Decoder<unknown>, fixture: ErrorFixture): void {
      const { bytes, throwsFrom, code, reply } = fixture;
      assert.ok(throwsFrom <= bytes.length, "fixture shorter than throwsFrom");
      for (let end = 0; end < throwsFrom; end++) {
        assert.deepEqual(decode(bytes.subarray(0, end)), MORE, `prefix of ${end} bytes`);
      }
      for (let end = throwsFrom; end <= bytes.length; end++) {
        assert.throws(() => decode(bytes.subarray(0, end)), protocolError(code, reply));
      }
      assert.throws(() => decode(concat(bytes, trailing)), protocolError(code, reply));
    },
  };
}
