// A Server Component: the identity comes from the request headers mtlsgw set.
import { headers } from "next/headers";
import { identityFrom } from "../lib/identity";

export default async function Home() {
  const identity = identityFrom(await headers());
  if (identity === null) {
    return <p>No client certificate.</p>; // proxy.ts already answered 401
  }
  return (
    <main>
      <p>
        Signed in as <strong id="cn">{identity.cn ?? "(no single CN)"}</strong>
      </p>
      <p>
        Subject: <code id="subject">{identity.subject}</code>
      </p>
    </main>
  );
}
