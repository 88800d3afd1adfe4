// A Node service calling meshgate with the generated TypeScript client (make clients):
// Connect-ES's gRPC transport over mTLS. Prints one JSON line per call.
//   MESHGATE_TARGET       host:port of a running meshgate
//   MESHGATE_CLIENT       build/clients/typescript (the generated package)
//   MESHGATE_KEY_FILE     a file holding an ADMIN API key
//   MESHGATE_TLS_DIR      ca.pem, client.pem, client-key.pem
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

const env = process.env;
const generated = (path) => import(pathToFileURL(join(env.MESHGATE_CLIENT, "gen", path)).href);
const { NamespaceService } = await generated("meshgate/v1/namespace_service_pb.js");
const { Environment } = await generated("meshgate/v1/common_pb.js");
const { ErrorInfoSchema, RequestInfoSchema } = await generated("google/rpc/error_details_pb.js");

const tls = (name) => readFileSync(join(env.MESHGATE_TLS_DIR, name));
const transport = createGrpcTransport({
  baseUrl: `https://${env.MESHGATE_TARGET}`,
  nodeOptions: { ca: tls("ca.pem"), cert: tls("client.pem"), key: tls("client-key.pem") },
});
const namespaces = createClient(NamespaceService, transport);
const key = readFileSync(env.MESHGATE_KEY_FILE, "utf8").trim();
const print = (line) => console.log(JSON.stringify(line));

// a call: its response, and the x-request-id trailer
let trailers = new Headers();
const created = await namespaces.createNamespace(
  { name: "from-node", environment: Environment.DEVELOPMENT },
  {
    headers: { authorization: `Bearer ${key}`, "x-request-id": "node-req-1" },
    onTrailer: (received) => { trailers = received; },
  },
);
print({
  call: "CreateNamespace",
  namespace_id: created.namespace.namespaceId,
  name: created.namespace.name,
  x_request_id: trailers.get("x-request-id"),
});

// refusals: the status code, and the ErrorInfo reason read from the error details
async function refusal(call, request, headers) {
  try {
    await namespaces[call](request, { headers });
    print({ call, refused: false });
  } catch (caught) {
    const error = ConnectError.from(caught);
    const [info] = error.findDetails(ErrorInfoSchema);
    const [requestInfo] = error.findDetails(RequestInfoSchema);
    print({
      call,
      code: Code[error.code],
      message: error.rawMessage,
      domain: info?.domain,
      reason: info?.reason,
      metadata: info?.metadata,
      request_info: requestInfo?.requestId,
      x_request_id: error.metadata.get("x-request-id"),
    });
  }
}

await refusal("getNamespace", {}, { authorization: "Bearer mg_development_not-a-key" });
await refusal("getNamespace", {}, { authorization: `Bearer ${key}`, "x-request-id": "node-req-2" });
await refusal("getNamespace", {}, { authorization: `Bearer ${key}`, "x-namespace": "no-such-one" });
