// A route handler reading the identity headers. proxy.ts has checked them already; a handler
// checks again, so that it stays safe if the matcher changes.
import { identityFrom } from "../../../lib/identity";

export const dynamic = "force-dynamic";

export async function GET(request: Request) {
  const identity = identityFrom(request.headers);
  if (identity === null) {
    return Response.json({ error: "client certificate required" }, { status: 401 });
  }
  return Response.json({ ...identity, forwardedFor: request.headers.get("x-forwarded-for") });
}
