// Test-time IAM evaluation for broker-issued sessions, using @cloud-copilot/iam-simulate (AGPL;
// test-only, never shipped).
//
// stdin:  {"identityPolicies": [<policy doc>, ...], "sessionPolicy": <policy doc>|null,
//          "principal": "arn:aws:sts::111122223333:assumed-role/role/session",
//          "resourceAccount": "111122223333"            (optional; default: principal's account)
//          "requests": [{"action": "s3:GetObject", "resource": "arn:aws:s3:::b/k",
//                        "context": {"aws:SourceIp": "203.0.113.7", ...}}]}
// stdout: {"results": [{"action", "resource", "result": "Allowed"|"ImplicitlyDenied"|
//                       "ExplicitlyDenied", "raw": <library response>}]}
//
// Session policies are evaluated natively by the library (Simulation.sessionPolicy; only
// accepted for role / assumed-role / federated-user principals): a request is allowed only when
// the identity policies AND the session policy allow it, and an explicit Deny in either wins.
// Input validation errors (bad policy, unknown action, context key of the wrong type) are NOT
// turned into a denial: the process prints {"error": ...} and exits 2, so tests fail loudly.
import { runSimulation } from '@cloud-copilot/iam-simulate';

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function accountOf(arn) {
  const parts = String(arn).split(':');
  return parts.length > 4 && /^\d{12}$/.test(parts[4]) ? parts[4] : undefined;
}

function fail(message, detail) {
  process.stdout.write(`${JSON.stringify({ error: message, detail: detail ?? null })}\n`);
  process.exit(2);
}

const input = JSON.parse(await readStdin());
const principal = input.principal;
if (typeof principal !== 'string') fail('principal (ARN string) is required');
const identityPolicies = (input.identityPolicies ?? []).map((policy, i) => ({
  name: `identity-${i}`,
  policy,
}));
const sessionPolicy = input.sessionPolicy ?? undefined;

const results = [];
for (const req of input.requests ?? []) {
  const resourceAccount = req.resourceAccount ?? input.resourceAccount ?? accountOf(principal);
  if (!resourceAccount) fail('cannot derive the resource account; pass resourceAccount', req);
  const simulation = {
    request: {
      principal,
      action: req.action,
      resource: { resource: req.resource, accountId: resourceAccount },
      contextVariables: req.context ?? {},
    },
    identityPolicies,
    sessionPolicy,
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    resourcePolicy: req.resourcePolicy ?? undefined,
  };
  const response = await runSimulation(simulation, { simulationMode: 'Strict' });
  if (response.resultType === 'error') fail('simulation input rejected', response.errors);
  const ignored =
    response.resultType === 'single' ? (response.result.ignoredContextKeys ?? []) : [];
  results.push({
    action: req.action,
    resource: req.resource,
    result: response.overallResult,
    ignoredContextKeys: ignored,
    raw: response,
  });
}
process.stdout.write(`${JSON.stringify({ results })}\n`);
