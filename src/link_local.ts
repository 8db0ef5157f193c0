/**
 * Zones for IPv6 link-local addresses. A client can reach ferry over
 * `fe80::…%eth0`, and Deno reports the address the connection came in on
 * without its zone. A BIND listener or a UDP relay socket for that client
 * must be bound to the same interface, and datagrams to the client sent out
 * of it: unzoned, a bind fails (EINVAL), and a send takes the first link's
 * route (with docker0 or a VPN up, another host on another link may get
 * them). The interface is found by the address, with
 * `Deno.networkInterfaces()` (permission `--allow-sys=networkInterfaces`).
 *
 * @module
 */
import { formatIPv6, isLinkLocalIPv6, parseIPv6 } from "./protocol/address.ts";

/** The interface index (`%2`) of local link-local address `host`, or why there is none. */
export type Zone = { readonly zone: string } | { readonly problem: string };

/**
 * The zone of `host`, one of this machine's own link-local addresses. An
 * address found on several interfaces (set by hand on two links) has no one
 * zone, and ferry does not guess.
 */
export function zoneOf(host: string): Zone {
  const wanted = parseIPv6(host);
  if (wanted === null) return { problem: `${host} is not an IPv6 address` };
  let interfaces: Deno.NetworkInterfaceInfo[];
  try {
    interfaces = Deno.networkInterfaces();
  } catch (error) {
    return {
      problem: `cannot list the interfaces to find the zone of ${host} (${
        (error as Error).message
      }); ferry needs --allow-sys=networkInterfaces for link-local clients`,
    };
  }
  const canonical = formatIPv6(wanted);
  const scopes = new Set(
    interfaces
      .filter((i) => i.family === "IPv6" && i.scopeid !== null)
      .filter((i) => {
        const bytes = parseIPv6(i.address.split("%")[0]!);
        return bytes !== null && formatIPv6(bytes) === canonical;
      })
      .map((i) => i.scopeid),
  );
  if (scopes.size === 1) return { zone: String([...scopes][0]) };
  return {
    problem: scopes.size === 0
      ? `no interface has the link-local address ${host}`
      : `the link-local address ${host} is on ${scopes.size} interfaces; which one the client ` +
        `is on cannot be told`,
  };
}

/**
 * `host` with its zone if it is link-local (`fe80::1%2`), else `host`.
 * Throws an Error saying why when a link-local address's zone is unknown.
 */
export function zonedHost(host: string): string {
  if (!isLinkLocalIPv6(host)) return host;
  const found = zoneOf(host);
  if ("problem" in found) throw new Error(found.problem);
  return `${host}%${found.zone}`;
}
