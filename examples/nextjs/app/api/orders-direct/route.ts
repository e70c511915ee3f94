// The alternative without the gateway's egress listener: the app holds the key and builds an
// https.Agent (Node's built-in fetch cannot take one, hence https.get). Compare with
// app/api/orders/route.ts; README.md here weighs the two.
import { readFileSync } from "node:fs";
import https from "node:https";

export const dynamic = "force-dynamic";

let agent: https.Agent | undefined;

function partnerAgent(): https.Agent | null {
  const { ORDERS_KEY_FILE, ORDERS_CERT_FILE, ORDERS_CA_FILE } = process.env;
  if (!ORDERS_KEY_FILE || !ORDERS_CERT_FILE || !ORDERS_CA_FILE) {
    return null;
  }
  agent ??= new https.Agent({
    key: readFileSync(ORDERS_KEY_FILE),
    cert: readFileSync(ORDERS_CERT_FILE),
    ca: readFileSync(ORDERS_CA_FILE),
    keepAlive: true,
  });
  return agent;
}

export async function GET() {
  const withKey = partnerAgent();
  if (withKey === null) {
    return Response.json({ error: "ORDERS_*_FILE not set" }, { status: 503 });
  }
  const url = `${process.env.ORDERS_URL ?? "https://api.internal"}/orders`;
  const body = await new Promise<string>((resolve, reject) => {
    https
      .get(url, { agent: withKey }, (res) => {
        let data = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (data += chunk));
        res.on("end", () => resolve(data));
      })
      .on("error", reject);
  });
  return new Response(body, { headers: { "content-type": "application/json" } });
}
