/**
 * The configuration file: JSONC (JSON with comments and trailing commas)
 * describing the log settings and any number of SOCKS and forward listeners.
 * It is validated into exactly the {@linkcode SocksConfig} and
 * {@linkcode ForwardConfig} objects the command line produces, and every
 * problem is reported at once: syntax errors as `FILE:LINE:COL: message`,
 * everything else as `PATH: message`, with PATH like `listeners[1].to[0]`.
 *
 * @module
 */

import { dirname, resolve } from "node:path";
import {
  createScanner,
  getNodeValue,
  type Node as JsonNode,
  type ParseError,
  parseTree,
  printParseErrorCode,
  type SyntaxKind,
} from "jsonc-parser";
import { z } from "zod";
import {
  checkDuration,
  checkHostPort,
  checkUdpAdvertise,
  ConfigError,
  DEFAULTS,
  EACH_UPSTREAM_ONCE,
  earlierSameUpstream,
  type ForwardConfig,
  fromWhere,
  type ListenAddress,
  listensCollide,
  LOG_FORMATS,
  LOG_LEVELS,
  type LogFormat,
  logFormatOf,
  type LogLevel,
  logLevelOf,
  looksLikeUtf16,
  MAX_POOL,
  type Minimum,
  NO_UDP_ADVERTISE,
  parseDuration,
  parseHostPort,
  POOL_MAX_IDLE_MIN,
  reaches,
  readTextFile,
  type SocksConfig,
  takeUsersFileLines,
  type TextFile,
  usersFileLines,
  wildcardIsIpv6Only,
} from "./config.ts";
import { formatAddress } from "./protocol/address.ts";

/** Everything a configuration file describes, validated. */
export interface RunConfig {
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
  /** In file order; each carries `logLevel` and `logFormat` too. */
  readonly listeners: readonly (SocksConfig | ForwardConfig)[];
}

/** A path into the document, as zod and jsonc-parser spell it. */
type DocPath = readonly PropertyKey[];

/** Formats a path as `listeners[1].to[0]`; keys that are not identifiers go in brackets. */
export function formatPath(path: DocPath): string {
  let text = "";
  for (const segment of path) {
    if (typeof segment === "number") text += `[${segment}]`;
    else if (typeof segment === "string" && /^[A-Za-z_$][\w$]*$/.test(segment)) {
      text += text === "" ? segment : `.${segment}`;
    } else text += `[${JSON.stringify(String(segment))}]`;
  }
  return text;
}

/**
 * A value as the user wrote it, shortened; `nothing` when absent. An object
 * or array that is not empty only by its kind: it may hold users, and its
 * first 57 characters their passwords (a listener written without the `[ ]`
 * of "listeners").
 */
function show(value: unknown): string {
  if (value === undefined) return "nothing";
  if (typeof value === "object" && value !== null && Object.keys(value).length > 0) {
    return kindOf(value);
  }
  // JSON has no Infinity: a number too big for a double (1e400) would show as null.
  const text = typeof value === "number" && !Number.isFinite(value)
    ? String(value)
    : JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** `"a", "b" or "c"`. */
function alternatives(words: readonly string[]): string {
  const quoted = words.map((word) => JSON.stringify(word));
  return quoted.length < 2
    ? quoted.join("")
    : `${quoted.slice(0, -1).join(", ")} or ${quoted.at(-1)}`;
}

/** A zod error option: `expected WHAT, got VALUE`, or `required; expected WHAT`. */
function expecting(what: string): { error: (issue: { input?: unknown }) => string } {
  return {
    error: (issue) =>
      issue.input === undefined
        ? `required; expected ${what}`
        : `expected ${what}, got ${show(issue.input)}`,
  };
}

/**
 * Like {@linkcode expecting}, for values that may hold a password: says what
 * kind of value it got, never the value itself.
 */
function expectingSecret(what: string): { error: (issue: { input?: unknown }) => string } {
  return {
    error: (issue) =>
      issue.input === undefined
        ? `required; expected ${what}`
        : `expected ${what}, got ${kindOf(issue.input)} (not shown: it may be secret)`,
  };
}

/** "a string", "a number", "an array"…: a value's kind, for messages that must not show it. */
function kindOf(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  const type = typeof value;
  return type === "object" ? "an object" : `a ${type}`;
}

const DURATION = `a positive duration with a unit, like "250ms", "10s", "5m", "1h" or "1h30m"`;
const ADDRESS = "HOST:PORT or [IPV6]:PORT";
const KINDS = ["socks", "forward"] as const;
const encoder = new TextEncoder();

/** A duration; `timer`: a timer's delay (see `MAX_TIMER_MS`). */
const durationOf = (timer: boolean, atLeast?: Minimum) =>
  z.string(expecting(DURATION)).transform((text, ctx) => {
    const checked = checkDuration(text, timer, atLeast);
    if (typeof checked === "number") return checked;
    const expected = parseDuration(text) === null ? `expected ${DURATION}` : checked.problem;
    ctx.addIssue({ code: "custom", message: `${expected}, got ${show(text)}`, input: text });
    return z.NEVER;
  });
const duration = durationOf(false);
const timerDuration = durationOf(true);

/** A log format, in any case, as `--log-format` takes it. */
const logFormat = z.preprocess(
  (value) => typeof value === "string" ? logFormatOf(value) ?? value : value,
  z.enum(LOG_FORMATS, expecting(alternatives(LOG_FORMATS))),
);

/** A log level, in the spellings `--log-level` takes (see `logLevelOf`). */
const logLevel = z.preprocess(
  (value) => typeof value === "string" ? logLevelOf(value) ?? value : value,
  z.enum(LOG_LEVELS, expecting(alternatives(LOG_LEVELS))),
);

/** One address, or an array of at most one per family; see `checkUdpAdvertise`. */
const UDP_ADVERTISE = 'an IPv4 or IPv6 address, like "203.0.113.7" or "2001:db8::7", ' +
  "or an array of one IPv4 and one IPv6 address";
const udpAdvertise = z.union(
  [z.string(), z.array(z.string()).min(1, expecting(UDP_ADVERTISE))],
  expecting(UDP_ADVERTISE),
).transform((value, ctx) => {
  const texts = typeof value === "string" ? [value] : value;
  const checked = checkUdpAdvertise(texts, JSON.stringify);
  if (!("problems" in checked)) return checked;
  for (const { index, problem } of checked.problems) {
    const input = texts[index];
    ctx.addIssue({
      code: "custom",
      message: `${problem}, got ${show(input)}`,
      input,
      path: typeof value === "string" ? [] : [index],
    });
  }
  return z.NEVER;
});

const count = (min: number, max?: number) => {
  if (max === undefined) {
    const what = expecting(`a whole number ≥ ${min}`);
    // The largest number there is only for a number too large (1e20, say).
    const tooLarge = expecting(`a whole number from ${min} to ${Number.MAX_SAFE_INTEGER}`);
    // JSON's 1e400 is Infinity, which z.number() refuses before max() sees it.
    const notNumber = {
      error: (issue: { input?: unknown }) =>
        (issue.input === Infinity ? tooLarge : what).error(issue),
    };
    return z.number(notNumber).max(Number.MAX_SAFE_INTEGER, { ...tooLarge, abort: true })
      .int(what).min(min, what);
  }
  const what = expecting(`a whole number from ${min} to ${max}`);
  return z.number(what).int(what).min(min, what).max(max, what);
};

/** A `HOST:PORT` value: a listen address (port 0: any free port) or an upstream's (1 to 65535). */
const hostPort = (minPort: 0 | 1) =>
  z.string(expecting(ADDRESS)).transform((text, ctx): ListenAddress => {
    const checked = checkHostPort(text, minPort);
    if (!("problem" in checked)) return checked;
    ctx.addIssue({ code: "custom", message: `${checked.problem}, got ${show(text)}`, input: text });
    return z.NEVER;
  });
const listenAddress = hostPort(0);
const upstreamAddress = hostPort(1);

/** RFC 1929 limits user names and passwords to 1–255 bytes, as {@linkcode parseUser} does. */
const byteLength = (text: string) => encoder.encode(text).length;
const fitsRfc1929 = (text: string) => byteLength(text) >= 1 && byteLength(text) <= 255;

/**
 * A JSON string may hold half a UTF-16 pair (`"\ud800"`): encoded as UTF-8
 * it became U+FFFD, so the password that worked was not the one written.
 */
const wholeText = (schema: z.ZodString) =>
  schema.refine((text) => text.isWellFormed(), {
    error:
      "has a lone surrogate (a \\uD800-\\uDFFF escape without its pair); expected Unicode text",
    abort: true,
  });

const user = z.strictObject({
  name: wholeText(z.string(expecting("a user name"))).refine(fitsRfc1929, {
    error: (issue) => {
      const name = String(issue.input);
      return `user name must be 1 to 255 bytes (RFC 1929), got ${byteLength(name)} in ${
        show(name)
      }`;
    },
  }),
  password: wholeText(z.string(expectingSecret("a password"))).refine(fitsRfc1929, {
    error: (issue) =>
      `password must be 1 to 255 bytes (RFC 1929), got ${byteLength(String(issue.input))}`,
  }),
}, expectingSecret(`a user like {"name": "alice", "password": "secret"}`));

/** Settings that `defaults` holds and any listener may override. */
const shared = {
  handshakeTimeout: duration.optional(),
  connectTimeout: timerDuration.optional(),
  idleTimeout: duration.optional(),
  shutdownGrace: timerDuration.optional(),
  maxConns: count(1).optional(),
  maxConnsPerIp: count(1).optional(),
};

/** A forwarder has no handshake: on its listener the setting is a mistake, as the flag is. */
const { handshakeTimeout: _socksOnly, ...forwardShared } = shared;

const socksListener = z.strictObject({
  kind: z.literal("socks"),
  listen: listenAddress,
  // Empty, it would mean no authentication, as a users file with no users
  // is refused for: a config written by a script that found no users
  // should not open the proxy to everyone. No authentication: leave it out.
  users: z.array(user, expectingSecret("an array of users"))
    .min(1, {
      error: "expected at least one user; leave users out for a proxy without authentication",
    })
    .optional(),
  usersFile: z.string(expecting("a file path")).min(1, expecting("a file path")).optional(),
  socks4: z.boolean(expecting("true or false")).optional(),
  udpAdvertise: udpAdvertise.optional(),
  bindTimeout: duration.optional(),
  maxUdpPerIp: count(1).optional(),
  ...shared,
}, expecting("a listener object"));

/** Stands for an upstream that did not parse: the same as none (see earlierSameUpstream). */
const NOT_PARSED: ListenAddress = { hostname: "", port: 0 };

const forwardListener = z.strictObject({
  kind: z.literal("forward"),
  listen: listenAddress,
  to: z.array(upstreamAddress, expecting(`an array of ${ADDRESS} upstreams`)).min(1, {
    error: () => `expected at least one upstream ${ADDRESS}, got []`,
  }).superRefine((upstreams, ctx) => {
    // Those that did not parse are reported as they are, and compared with
    // none: what they hold is their input (an object shaped like an address, say).
    const bad = new Set(ctx.issues.map((issue) => issue.path?.[0]));
    const parsed = upstreams.map((upstream, i) => bad.has(i) ? NOT_PARSED : upstream);
    parsed.forEach((_, index) => {
      const earlier = earlierSameUpstream(parsed, index);
      if (earlier < 0) return;
      ctx.addIssue({
        code: "custom",
        path: [index],
        message: `the same upstream as to[${earlier}]; ${EACH_UPSTREAM_ONCE}`,
      });
    });
  }, {
    // Also when another upstream of the list is bad, as the command line
    // does: every problem at once, not the duplicate after the fix.
    when: (payload) => Array.isArray(payload.value),
  }),
  pool: count(0, MAX_POOL).optional(),
  poolMaxIdle: durationOf(false, POOL_MAX_IDLE_MIN).optional(),
  ...forwardShared,
}, expecting("a listener object"));

const fileSchema = z.strictObject({
  log: z.strictObject({
    level: logLevel.optional(),
    format: logFormat.optional(),
  }, expecting(`an object like {"level": "info", "format": "text"}`)).optional(),
  defaults: z.strictObject(shared, expecting("an object")).optional(),
  listeners: z.array(
    z.discriminatedUnion(
      "kind",
      [socksListener, forwardListener],
      expecting(`a listener object with "kind": ${alternatives(KINDS)}`),
    ),
    expecting("an array of listeners"),
  ).min(1, { error: () => "expected at least one listener, got []" }),
}, expecting(`an object with "listeners"`));

type FileConfig = z.output<typeof fileSchema>;

/** One problem, and where in the file it is, for listing problems in file order. */
interface Problem {
  readonly offset: number;
  readonly text: string;
}

/**
 * Where each line of the last text asked about starts: a file with many
 * problems is asked about once a problem, and working each out from the
 * start of the text took minutes for a file of 200,000 bad lines.
 */
let lineStarts: { readonly text: string; readonly starts: readonly number[] } | null = null;

/** The 1-based line of `offset` in `text`, and the offset that line starts at. */
function lineAt(text: string, offset: number): { line: number; start: number } {
  if (lineStarts?.text !== text) {
    const starts = [0];
    for (let at = text.indexOf("\n"); at >= 0; at = text.indexOf("\n", at + 1)) starts.push(at + 1);
    lineStarts = { text, starts };
  }
  const { starts } = lineStarts;
  const line = countBelow(starts, offset + 1); // the lines starting at or before offset
  return { line, start: starts[line - 1]! };
}

/** The 1-based line of `offset` in `text`. */
function lineOf(text: string, offset: number): number {
  return lineAt(text, offset).line;
}

/** Maps offsets in `text` to 1-based line and column. */
function lineCol(text: string, offset: number): string {
  const { line, start } = lineAt(text, offset);
  return `${line}:${offset - start + 1}`;
}

/** How many of the ascending `sorted` are below `limit`, by binary search. */
function countBelow(sorted: readonly number[], limit: number): number {
  let low = 0;
  for (let high = sorted.length; low < high;) {
    const middle = (low + high) >> 1;
    if (sorted[middle]! < limit) low = middle + 1;
    else high = middle;
  }
  return low;
}

const PARSE_MESSAGES: Readonly<Record<string, string>> = {
  InvalidSymbol: "unexpected symbol",
  InvalidNumberFormat: "invalid number",
  PropertyNameExpected: "expected a property name in double quotes",
  ValueExpected: "expected a value",
  ColonExpected: `expected ":"`,
  CommaExpected: `expected ","`,
  CloseBraceExpected: `expected "}"`,
  CloseBracketExpected: `expected "]"`,
  EndOfFileExpected: "expected the end of the file",
  InvalidCommentToken: "invalid comment",
  UnexpectedEndOfComment: "unterminated comment",
  UnexpectedEndOfString: "unterminated string",
  UnexpectedEndOfNumber: "unterminated number",
  InvalidUnicode: "invalid unicode escape",
  InvalidEscapeCharacter: "invalid escape character",
  InvalidCharacter: "invalid character in string",
};

/**
 * Whether a syntax error at an offset of `text` may be in a password,
 * written any way (unquoted, single-quoted, after a missing colon, holding a
 * `}`): anywhere inside a `users` array, or after a `password` key with no
 * `}` since or on that key's line; the keys in any quotes or none (JSON5).
 * Its token is then not shown. Worked out once a text: a file of garbage has
 * a syntax error a character, and looking back through the text for each
 * took minutes.
 */
function passwordGuard(text: string): (offset: number) => boolean {
  const users = standalone(text, "users");
  const passwords = standalone(text, "password");
  // [ minus ] before each offset: a password's own brackets may skew it, rarely.
  let depthBefore: Int32Array | null = null;
  return (offset) => {
    const key = lastBefore(users, offset);
    if (key >= 0) {
      if (depthBefore === null) {
        depthBefore = new Int32Array(text.length + 1);
        for (let i = 0, depth = 0; i < text.length; i++) {
          if (text[i] === "[") depth++;
          else if (text[i] === "]") depth--;
          depthBefore[i + 1] = depth;
        }
      }
      if (depthBefore[offset]! - depthBefore[key]! > 0) return true;
    }
    const password = lastBefore(passwords, offset);
    if (password < 0) return false;
    const brace = text.indexOf("}", password);
    const newline = text.indexOf("\n", password);
    return brace < 0 || brace >= offset || newline < 0 || newline >= offset;
  };
}

/** Where `word` stands on its own in `text` (not in `usersFile`), in order. */
function standalone(text: string, word: string): number[] {
  const isWordChar = (at: number) => /[A-Za-z0-9_]/.test(text[at] ?? "");
  const found: number[] = [];
  for (let at = text.indexOf(word); at >= 0; at = text.indexOf(word, at + 1)) {
    if (!isWordChar(at - 1) && !isWordChar(at + word.length)) found.push(at);
  }
  return found;
}

/** The last of the ascending `positions` before `offset`, or -1. */
function lastBefore(positions: readonly number[], offset: number): number {
  const below = countBelow(positions, offset);
  return below === 0 ? -1 : positions[below - 1]!;
}

/**
 * Errors found inside a string literal, whose token is the whole string: a
 * password, perhaps, so the message gives its place and not its text.
 */
const IN_STRING_ERRORS: ReadonlySet<string> = new Set([
  "UnexpectedEndOfString",
  "InvalidUnicode",
  "InvalidEscapeCharacter",
  "InvalidCharacter",
]);

/** The node at `path`, or its deepest ancestor that exists. */
function nodeAt(root: JsonNode, path: DocPath): JsonNode {
  let node = root;
  for (const segment of path) {
    let next: JsonNode | undefined;
    if (node.type === "object" && typeof segment === "string") {
      next = node.children?.findLast((property) => property.children?.[0]?.value === segment)
        ?.children?.[1];
    } else if (node.type === "array" && typeof segment === "number") {
      next = node.children?.[segment];
    }
    if (!next) break;
    node = next;
  }
  return node;
}

/** Reports keys that appear twice in one object; JSON would silently keep the last. */
function duplicateKeys(node: JsonNode, text: string, source: string, problems: Problem[]): void {
  if (node.type === "object") {
    const seen = new Map<string, JsonNode>();
    for (const property of node.children ?? []) {
      const key = property.children?.[0];
      if (!key || typeof key.value !== "string") continue;
      const first = seen.get(key.value);
      if (first) {
        problems.push({
          offset: key.offset,
          text: `${source}:${lineCol(text, key.offset)}: duplicate key ${
            show(key.value)
          }; it is first at ${lineCol(text, first.offset)}`,
        });
      } else seen.set(key.value, key);
    }
  }
  for (const child of node.children ?? []) duplicateKeys(child, text, source, problems);
}

/** Turns one zod issue into problems; unknown keys become one problem each. */
function problemsOf(issue: z.core.$ZodIssue, root: JsonNode, source: string): Problem[] {
  const at = (path: DocPath, message: string): Problem => ({
    offset: nodeAt(root, path).offset,
    text: `${path.length === 0 ? source : formatPath(path)}: ${message}`,
  });
  if (issue.code === "unrecognized_keys") {
    return issue.keys.map((key) => at([...issue.path, key], "unknown key"));
  }
  if (issue.code === "invalid_union" && issue.discriminator !== undefined) {
    const value = (issue.input as Record<string, unknown> | undefined)?.[issue.discriminator];
    const expected = `expected ${alternatives(KINDS)}`;
    return [
      at(
        issue.path,
        value === undefined ? `required; ${expected}` : `${expected}, got ${show(value)}`,
      ),
    ];
  }
  return [at(issue.path, issue.message)];
}

/** What the users of one socks listener checks need. */
interface UsersCheck {
  readonly listener: Record<string, unknown>;
  readonly path: DocPath;
  readonly baseDir: string;
  readonly root: JsonNode;
  readonly problems: Problem[];
}

/**
 * Builds one socks listener's users from `users` and `usersFile`, reading the
 * file. Works on the raw value so that it runs even when other parts are
 * invalid; malformed `users` entries are left to the schema to report.
 */
async function collectUsers(check: UsersCheck): Promise<Map<string, Uint8Array>> {
  const { listener, path, root, problems } = check;
  const users = new Map<string, Uint8Array>();
  const definedAt = new Map<string, string>();
  const add = (name: string, password: Uint8Array, where: string, offset: number) => {
    const earlier = definedAt.get(name);
    if (earlier !== undefined) {
      problems.push({
        offset,
        text: `${where}: user ${show(name)} is already defined at ${earlier}`,
      });
      return;
    }
    definedAt.set(name, where);
    users.set(name, password);
  };
  if (Array.isArray(listener.users)) {
    listener.users.forEach((entry, index) => {
      const parsed = user.safeParse(entry);
      if (!parsed.success) return;
      const entryPath = [...path, "users", index];
      add(
        parsed.data.name,
        encoder.encode(parsed.data.password),
        formatPath(entryPath),
        nodeAt(root, entryPath).offset,
      );
    });
  }
  const file = listener.usersFile;
  if (typeof file !== "string" || file === "") return users;
  const filePath = [...path, "usersFile"];
  const offset = nodeAt(root, filePath).offset;
  const fullPath = resolve(check.baseDir, file);
  let content: TextFile;
  try {
    content = await readTextFile(fullPath);
  } catch (error) {
    problems.push({
      offset,
      text: `${formatPath(filePath)}: cannot read ${show(fullPath)}: ${(error as Error).message}`,
    });
    return users;
  }
  const lines = usersFileLines(content, fullPath);
  takeUsersFileLines(
    lines,
    fullPath,
    problems,
    (text) => problems.push({ offset, text }),
    (user) => add(user.name, user.password, user.where, offset),
  );
  if (lines.length === 0) {
    problems.push({
      offset,
      text: `${formatPath(filePath)}: ${show(fullPath)} defines no users; ` +
        `expected lines of NAME:PASSWORD`,
    });
  }
  return users;
}

/**
 * The first line whose bytes that are not UTF-8 (`notUtf8`) matter, or
 * `null`. They may sit in a comment (a Latin-1 é), harmless; in a string they
 * change it, and on a line with a syntax error they are the likely cause. A
 * file in another encoding (UTF-16: NULs between the characters, or its BOM)
 * is blamed as a whole, not with a parse error for every character.
 */
function lineToBlame(
  text: string,
  root: JsonNode | undefined,
  parseErrors: readonly ParseError[],
  notUtf8: ReadonlySet<number>,
): number | null {
  // Not Math.min(...lines): a large file has more lines than a call has room for arguments.
  const first = (lines: Iterable<number>) => {
    let least: number | null = null;
    for (const line of lines) if (least === null || line < least) least = line;
    return least;
  };
  if (looksLikeUtf16(text)) return first(notUtf8);
  // A syntax error on a line whose bad bytes all sit in a comment is the
  // syntax's fault: it is reported as such (`"a": 1 // café` missing a comma).
  const comments = commentRanges(text); // in file order, as the bad bytes are met
  const outside = new Set<number>();
  let comment = 0;
  for (let at = text.indexOf("\uFFFD"); at >= 0; at = text.indexOf("\uFFFD", at + 1)) {
    while (comment < comments.length && comments[comment]![1] <= at) comment++;
    const inComment = comment < comments.length && comments[comment]![0] <= at;
    if (!inComment) outside.add(lineOf(text, at));
  }
  const spoilt = parseErrors.map((error) => lineOf(text, error.offset))
    .concat(
      root === undefined ? [] : stringNodes(root)
        .filter((node) => text.slice(node.offset, node.offset + node.length).includes("\uFFFD"))
        .map((node) => lineOf(text, node.offset)),
    )
    .filter((line) => notUtf8.has(line) && outside.has(line));
  return first(spoilt);
}

/**
 * jsonc-parser's SyntaxKind values for comments and the end: a const enum,
 * which cannot be read at run time under isolatedModules.
 */
const LINE_COMMENT = 12 as SyntaxKind;
const BLOCK_COMMENT = 13 as SyntaxKind;
const END = 17 as SyntaxKind;

/** Where the comments of a JSONC text are, as [start, end) offsets. */
function commentRanges(text: string): [number, number][] {
  const ranges: [number, number][] = [];
  const scanner = createScanner(text, false);
  for (let kind = scanner.scan(); kind !== END; kind = scanner.scan()) {
    if (kind === LINE_COMMENT || kind === BLOCK_COMMENT) {
      ranges.push([scanner.getTokenOffset(), scanner.getTokenOffset() + scanner.getTokenLength()]);
    }
  }
  return ranges;
}

/** Every string in the document, keys included. */
function stringNodes(node: JsonNode): JsonNode[] {
  if (node.type === "string") return [node];
  return (node.children ?? []).flatMap(stringNodes);
}

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/**
 * Reports listeners whose listen addresses collide (see `listensCollide`):
 * the second could not open, and "address already in use" would not say
 * that ferry itself holds it.
 */
function collidingListens(
  raw: unknown,
  root: JsonNode,
  problems: Problem[],
  v6Only: boolean,
): void {
  if (!isObject(raw) || !Array.isArray(raw.listeners)) return;
  const byPort = new Map<number, { index: number; text: string; address: ListenAddress }[]>();
  raw.listeners.forEach((listener: unknown, index) => {
    if (!isObject(listener) || typeof listener.listen !== "string") return;
    const address = parseHostPort(listener.listen);
    if (!address || address.port === 0) return;
    const samePort = byPort.get(address.port) ?? [];
    const earlier = samePort.find((other) =>
      listensCollide(other.address, address, v6Only) !== null
    );
    samePort.push({ index, text: listener.listen, address });
    byPort.set(address.port, samePort);
    if (!earlier) return;
    const how = listensCollide(earlier.address, address, v6Only);
    const path = ["listeners", index, "listen"];
    problems.push({
      offset: nodeAt(root, path).offset,
      text: `${formatPath(path)}: ${show(listener.listen)} ${
        how === "the same address"
          ? `is already used by listeners[${earlier.index}]`
          : `collides with listeners[${earlier.index}] (${show(earlier.text)}): ${how}`
      }`,
    });
  });
}

/** What the loop check needs of a listener: whether it forwards, and its addresses that parse. */
interface LoopNode {
  readonly forwards: boolean;
  readonly listen: ListenAddress | null;
  /** Its upstreams by index in `to`; `null` where one does not parse (reported already). */
  readonly to: readonly (ListenAddress | null)[];
}

/**
 * The listeners of the raw file as the loop check sees them, also when the
 * file has other problems (an unknown key, a bad value elsewhere): a loop is
 * then reported with them, not only on the next start.
 */
function loopView(raw: unknown): LoopNode[] {
  if (!isObject(raw) || !Array.isArray(raw.listeners)) return [];
  // As the schema checks them, so that only values it takes count.
  const address = (value: unknown, minPort: 0 | 1) => {
    if (typeof value !== "string") return null;
    const checked = checkHostPort(value, minPort);
    return "problem" in checked ? null : checked;
  };
  return raw.listeners.map((listener: unknown) => {
    if (!isObject(listener) || listener.kind !== "forward") {
      return { forwards: false, listen: null, to: [] };
    }
    const to = Array.isArray(listener.to) ? listener.to : [];
    return {
      forwards: true,
      listen: address(listener.listen, 0),
      to: to.map((value: unknown) => address(value, 1)),
    };
  });
}

/**
 * Reports forwarders whose upstream leads back to themselves: directly (its
 * own listen address), or through other forwarders of the file (A to B, B to
 * A). Either way each connection would make another until no descriptor is
 * left. A chain that ends anywhere else is fine.
 */
function forwardingLoops(
  listeners: readonly LoopNode[],
  root: JsonNode,
  problems: Problem[],
  v6Only: boolean,
): void {
  /** For each `to` of each forwarder, the forwarders a connection to it may arrive at. */
  const arrivesAt = listeners.map((listener) =>
    listener.to.map((to) =>
      to === null
        ? []
        : listeners.flatMap((other, index) =>
          other.forwards && other.listen !== null && reaches(to, other.listen, v6Only)
            ? [index]
            : []
        )
    )
  );
  /** The forwarders a connection from forwarder `from` may arrive at. */
  const next = arrivesAt.map((perTo) => [...new Set(perTo.flat())]);
  listeners.forEach((listener, index) => {
    if (!listener.forwards) return;
    listener.to.forEach((to, toIndex) => {
      if (to === null) return;
      for (const first of arrivesAt[index]![toIndex]!) {
        // Breadth-first from `first`: does it lead back to `index`?
        const seen = new Map<number, number>([[first, -1]]); // forwarder → the one before it
        for (const queue = [first]; queue.length > 0;) {
          const at = queue.shift()!;
          if (at === index) {
            const path: number[] = [];
            for (let hop = at; hop !== -1; hop = seen.get(hop)!) path.unshift(hop);
            const via = path.length === 1
              ? ""
              : ` through ${path.slice(0, -1).map((hop) => `listeners[${hop}]`).join(", ")}`;
            const where = ["listeners", index, "to", toIndex];
            problems.push({
              offset: nodeAt(root, where).offset,
              text: `${formatPath(where)}: expected an address that does not lead back to this ` +
                `listener${via} (ferry would forward to itself), got ${
                  show(formatAddress({ host: to.hostname, port: to.port }))
                }`,
            });
            return;
          }
          for (const hop of next[at]!) {
            if (seen.has(hop)) continue;
            seen.set(hop, at);
            queue.push(hop);
          }
        }
      }
    });
  });
}

const defaultMs = (text: string): number => parseDuration(text)!;

/** Puts defaults, file-wide defaults and per-listener settings together. */
function buildListeners(
  file: FileConfig,
  users: ReadonlyMap<number, Map<string, Uint8Array>>,
): (SocksConfig | ForwardConfig)[] {
  const log = {
    logLevel: file.log?.level ?? DEFAULTS.logLevel,
    logFormat: file.log?.format ?? DEFAULTS.logFormat,
  };
  const defaults = file.defaults ?? {};
  return file.listeners.map((listener, index) => {
    const maxConns = listener.maxConns ?? defaults.maxConns ?? Number(DEFAULTS.maxConns);
    const common = {
      listen: listener.listen,
      handshakeTimeoutMs: (listener.kind === "socks" ? listener.handshakeTimeout : undefined) ??
        defaults.handshakeTimeout ??
        defaultMs(DEFAULTS.handshakeTimeout),
      connectTimeoutMs: listener.connectTimeout ?? defaults.connectTimeout ??
        defaultMs(DEFAULTS.connectTimeout),
      idleTimeoutMs: listener.idleTimeout ?? defaults.idleTimeout ??
        defaultMs(DEFAULTS.idleTimeout),
      shutdownGraceMs: listener.shutdownGrace ?? defaults.shutdownGrace ??
        defaultMs(DEFAULTS.shutdownGrace),
      maxConns,
      maxConnsPerIp: listener.maxConnsPerIp ?? defaults.maxConnsPerIp ?? maxConns,
      ...log,
    };
    if (listener.kind === "socks") {
      return {
        kind: "socks",
        ...common,
        users: users.get(index) ?? new Map(),
        socks4: listener.socks4 ?? true,
        udpAdvertise: listener.udpAdvertise ?? NO_UDP_ADVERTISE,
        bindTimeoutMs: listener.bindTimeout ?? common.connectTimeoutMs,
        maxUdpPerIp: listener.maxUdpPerIp ?? Number(DEFAULTS.maxUdpPerIp),
      } satisfies SocksConfig;
    }
    return {
      kind: "forward",
      ...common,
      upstreams: listener.to,
      poolSize: listener.pool ?? Number(DEFAULTS.pool),
      poolMaxIdleMs: listener.poolMaxIdle ?? defaultMs(DEFAULTS.poolMaxIdle),
    } satisfies ForwardConfig;
  });
}

/**
 * Parses and validates the text of a configuration file. `source` names the
 * file in messages, and a relative `usersFile` is read from its directory;
 * reading those files is the only I/O, besides asking the kernel once
 * whether `[::]` takes IPv6 only, unless `v6Only` is given (see
 * `wildcardIsIpv6Only`). Throws {@linkcode ConfigError} listing every
 * problem, in file order.
 */
export async function parseRunConfig(
  text: string,
  source: string,
  notUtf8: ReadonlySet<number> = new Set(),
  v6Only = wildcardIsIpv6Only(),
): Promise<RunConfig> {
  try {
    return await readRunConfig(text, source, notUtf8, v6Only);
  } catch (error) {
    // The parser and the schema recurse once a level: thousands of nested
    // arrays overflow the stack, which must not end ferry with a stack trace.
    if (!(error instanceof RangeError)) throw error;
    throw new ConfigError([`${source}: arrays or objects nested too deeply to read`]);
  } finally {
    lineStarts = null; // not the file's text kept for the life of the process
  }
}

async function readRunConfig(
  text: string,
  source: string,
  notUtf8: ReadonlySet<number>,
  v6Only: boolean,
): Promise<RunConfig> {
  // Editors on Windows often save a byte order mark, which is no JSON token.
  if (text.startsWith("\uFEFF")) text = text.slice(1);
  const parseErrors: ParseError[] = [];
  const root = parseTree(text, parseErrors, {
    allowTrailingComma: true,
    disallowComments: false,
    allowEmptyContent: false,
  });
  const badLine = notUtf8.size === 0 ? null : lineToBlame(text, root, parseErrors, notUtf8);
  if (badLine !== null) {
    throw new ConfigError([`${source}:${badLine}: not UTF-8 text; save the file as UTF-8`]);
  }
  if (parseErrors.length > 0 || !root) {
    // One error a place: the parser often reports a second one where it recovers.
    const seen = new Set<number>();
    const firsts = parseErrors.filter((error) => {
      if (seen.has(error.offset)) return false;
      seen.add(error.offset);
      return true;
    });
    if (firsts.length === 0) throw new ConfigError([`${source}: no JSON value found`]);
    const nearPassword = passwordGuard(text);
    throw new ConfigError(firsts.map((error) => {
      const name = printParseErrorCode(error.error);
      const token = text.slice(error.offset, error.offset + error.length);
      const got = error.offset >= text.length
        ? "the end of the file"
        : IN_STRING_ERRORS.has(name)
        ? "a string (not shown: it may be secret)"
        : nearPassword(error.offset) || /password|users/i.test(token)
        ? "a value (not shown: it may be secret)"
        : token === ""
        ? show(text.slice(error.offset, error.offset + 1))
        : show(token);
      return `${source}:${lineCol(text, error.offset)}: ${
        PARSE_MESSAGES[name] ?? name
      }, got ${got}`;
    }));
  }
  const raw: unknown = getNodeValue(root);
  const problems: Problem[] = [];
  duplicateKeys(root, text, source, problems);

  const result = fileSchema.safeParse(raw, { reportInput: true });
  if (!result.success) {
    for (const issue of result.error.issues) problems.push(...problemsOf(issue, root, source));
  }
  collidingListens(raw, root, problems, v6Only);
  forwardingLoops(loopView(raw), root, problems, v6Only);

  const users = new Map<number, Map<string, Uint8Array>>();
  if (isObject(raw) && Array.isArray(raw.listeners)) {
    const baseDir = dirname(resolve(source));
    for (const [index, listener] of (raw.listeners as unknown[]).entries()) {
      if (!isObject(listener) || listener.kind !== "socks") continue;
      users.set(
        index,
        await collectUsers({
          listener,
          path: ["listeners", index],
          baseDir,
          root,
          problems,
        }),
      );
    }
  }

  if (problems.length > 0 || !result.success) {
    const texts = problems.toSorted((a, b) => a.offset - b.offset).map((p) => p.text);
    throw new ConfigError([...new Set(texts)]);
  }
  return {
    logLevel: result.data.log?.level ?? DEFAULTS.logLevel,
    logFormat: result.data.log?.format ?? DEFAULTS.logFormat,
    listeners: buildListeners(result.data, users),
  };
}

/**
 * Reads and validates a configuration file, and any `usersFile` it names.
 * Throws {@linkcode ConfigError} listing every problem.
 */
export async function loadConfigFile(path: string): Promise<RunConfig> {
  if (path.trim() === "") {
    throw new ConfigError([`--config: expected a file path, got ${show(path)}`]);
  }
  let file: TextFile;
  try {
    file = await readTextFile(path);
  } catch (error) {
    throw new ConfigError([
      `${path}: cannot read the configuration file${fromWhere(path)}: ${(error as Error).message}`,
    ]);
  }
  return await parseRunConfig(file.text, path, file.notUtf8);
}
