// Next.js 16's request interceptor (formerly middleware.ts): runs before every route, on the
// Node.js runtime. A request without the gateway's identity headers gets 401 before any page or
// route handler runs. This is the first line; the route handlers check again (app/api/whoami).
import { NextResponse, type NextRequest } from "next/server";
import { identityFrom } from "./lib/identity";

export function proxy(request: NextRequest) {
  if (identityFrom(request.headers) === null) {
    return new NextResponse("client certificate required\n", {
      status: 401,
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  }
  return NextResponse.next();
}

export const config = {
  // Everything except Next's own static files. The egress demo (/api/orders) needs an identity
  // too: only signed-in clients may make the app call the partner API.
  matcher: ["/((?!_next/static|_next/image|favicon.ico).*)"],
};
