// Egress through the gateway: a plain fetch to mtlsgw's egress listener on loopback. The gateway
// calls the partner API over TLS with ITS client certificate and verifies the API; this process
// holds no key (docs/deployments.md, "(c) Egress").
export const dynamic = "force-dynamic"; // call per request, never at build time

const EGRESS = process.env.MTLSGW_EGRESS_URL ?? "http://127.0.0.1:9080";

export async function GET() {
  const res = await fetch(`${EGRESS}/orders`, { cache: "no-store" });
  return new Response(await res.text(), {
    status: res.status,
    headers: { "content-type": res.headers.get("content-type") ?? "application/json" },
  });
}
