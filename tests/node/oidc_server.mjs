// A real OpenID Provider (panva/oidc-provider v9, OpenID Certified) for broker tests.
// Test-time only; never shipped.
//
// usage: node oidc_server.mjs CONFIG.json [PORT]        (PORT also from $OIDC_PORT; 0 = free port)
//
// CONFIG.json:
//   {
//     "clients": [{"client_id": "broker", "client_secret": "s3cret",       // or
//                  "token_endpoint_auth_method": "none",                  //   a public client
//                  "redirect_uris": ["http://127.0.0.1:8000/auth/callback"],
//                  "post_logout_redirect_uris": ["http://127.0.0.1:8000/"],
//                  ... any other client metadata (application_type, id_token_signed_response_alg)}],
//     "users": [{"sub": "dana", "email": "dana@contractor.example", "name": "Dana",
//                "groups": ["contractors"], "amr": ["pwd", "mfa"], "acr": "urn:example:mfa"}],
//     "ttl": {"IdToken": 3600, "AccessToken": 3600, "Session": 86400, ...},   (optional, seconds)
//     "autoLogout": true                       (optional; auto-submit the logout confirmation)
//   }
//
// When listening, prints exactly one JSON line to stdout: {"issuer": "...", "port": N}.
// Diagnostics go to stderr.
//
// Interactions: GET /interaction/:uid renders a login form (input name="login" taking the user's
// sub or email, any password, button "Sign in"; a "Cancel" button denies with access_denied).
// Consent is never asked: loadExistingGrant grants every requested scope/claim to the client.
// PKCE (S256) is required for every authorization code request, confidential clients included.
// Refresh tokens are issued to every client allowed the refresh_token grant (as Keycloak does).
//
// Test control (loopback only): POST /__test__/users/:sub with a JSON object replaces those
// fields of the user (email, email_verified, groups, ...): the provider's state changes the way
// an administrator's edit would, and later userinfo/refresh answers reflect it.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

import Provider, { errors } from 'oidc-provider';

const [configPath, portArg] = process.argv.slice(2);
if (!configPath) {
  process.stderr.write('usage: node oidc_server.mjs CONFIG.json [PORT]\n');
  process.exit(64);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const requestedPort = Number(portArg ?? process.env.OIDC_PORT ?? config.port ?? 0);
const HOST = '127.0.0.1';

// `groups: null` makes a user without a groups claim at all (Google Workspace, Keycloak shapes).
const users = (config.users ?? []).map((u) => ({ groups: [], amr: ['pwd'], ...u }));
function findUser(login) {
  const needle = String(login ?? '').trim();
  if (!needle) return undefined;
  return (
    users.find((u) => u.sub === needle) ??
    users.find((u) => (u.email ?? '').toLowerCase() === needle.toLowerCase())
  );
}

function signingKeys() {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({
    format: 'jwk',
  });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
    format: 'jwk',
  });
  // RS256 first: it is the default id_token_signed_response_alg.
  return [
    { ...rsa, kid: `rsa-${randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' },
    { ...ec, kid: `ec-${randomBytes(6).toString('hex')}`, alg: 'ES256', use: 'sig' },
  ];
}

function clientMetadata(c) {
  return {
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    post_logout_redirect_uris: [],
    ...(c.client_secret ? {} : { token_endpoint_auth_method: 'none' }),
    ...c,
  };
}

const esc = (s) =>
  String(s).replace(
    /[&<>"']/g,
    (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[ch],
  );

// No external fonts/CSS anywhere: the test machine has no internet.
function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body><main>${body}</main></body></html>`;
}

const OIDC_SCOPES = ['openid', 'offline_access', 'email', 'profile', 'groups'];
// Claims some providers send instead of (or beside) `groups`, copied from the user when set.
const SHAPE_CLAIMS = ['realm_access', 'roles', '_claim_names', '_claim_sources', 'hasgroups'];

function makeProvider(issuer) {
  return new Provider(issuer, {
    clients: (config.clients ?? []).map(clientMetadata),
    jwks: { keys: signingKeys() },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    conformIdTokenClaims: false,
    scopes: OIDC_SCOPES,
    claims: {
      // acr/amr/auth_time are only emitted when in the claims mask: declare them under openid.
    openid: ['sub', 'acr', 'amr', 'auth_time'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      // Provider shapes: Keycloak's realm_access.roles, Entra's app roles and group overage.
      groups: ['groups', ...SHAPE_CLAIMS],
    },
    pkce: { required: () => true },
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 86400,
      Interaction: 3600,
      Session: 86400,
      Grant: 86400,
      ...(config.ttl ?? {}),
    },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => {
          const auto = config.autoLogout ?? true;
          const withYes = form.replace(
            '</form>',
            '<input type="hidden" name="logout" value="yes"/></form>',
          );
          ctx.body = page(
            'Sign out',
            `<h1>Sign out of ${esc(ctx.host)}?</h1>${withYes}
<button type="submit" form="op.logoutForm">Sign out</button>
${auto ? '<script>document.getElementById("op.logoutForm").submit();</script>' : ''}`,
          );
        },
        postLogoutSuccessSource: async (ctx) => {
          ctx.body = page('Signed out', '<h1>Signed out</h1><p>You have been signed out.</p>');
        },
      },
    },
    interactions: {
      url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    findAccount: async (_ctx, sub) => {
      const user = users.find((u) => u.sub === sub);
      if (!user) return undefined;
      return {
        accountId: user.sub,
        claims: async () => ({
          sub: user.sub,
          email: user.email,
          // "absent" leaves the claim out, as providers that never send it do.
          email_verified: user.email_verified === 'absent' ? undefined : (user.email_verified ?? true),
          name: user.name,
          ...(user.groups === null ? {} : { groups: user.groups }),
          ...Object.fromEntries(SHAPE_CLAIMS.filter((c) => c in user).map((c) => [c, user[c]])),
        }),
      };
    },
    // Auto-consent: the grant always covers whatever the client asked for.
    loadExistingGrant: async (ctx) => {
      const { Grant } = ctx.oidc.provider;
      const grantId =
        ctx.oidc.result?.consent?.grantId ?? ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      let grant = grantId ? await Grant.find(grantId) : undefined;
      if (!grant) {
        grant = new Grant({
          accountId: ctx.oidc.account.accountId,
          clientId: ctx.oidc.client.clientId,
        });
      }
      const scopes = [...(ctx.oidc.requestParamScopes ?? [])].filter((s) =>
        OIDC_SCOPES.includes(s),
      );
      if (scopes.length) grant.addOIDCScope(scopes.join(' '));
      const claims = [...(ctx.oidc.requestParamClaims ?? [])];
      if (claims.length) grant.addOIDCClaims(claims);
      await grant.save();
      return grant;
    },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page(
        'Error',
        `<h1>Error</h1><pre id="error">${esc(out.error)}</pre>` +
          `<pre id="error_description">${esc(out.error_description ?? '')}</pre>`,
      );
    },
  });
}

// Assigned once the server is listening (the issuer has to carry the real port).
let provider;
let callback;

function readForm(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

function loginPage(uid, clientId, error) {
  return page(
    'Sign in',
    `<h1>Sign in</h1><p>to continue to ${esc(clientId)}</p>
${error ? `<p id="error" role="alert">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
  <label>Username or email <input type="text" name="login" autofocus></label>
  <label>Password <input type="password" name="password"></label>
  <button type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button type="submit">Cancel</button></form>`,
  );
}

function send(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
  });
  res.end(html);
}

async function handleInteraction(req, res, url) {
  const [, , uid, action] = url.pathname.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new errors.SessionNotFound('interaction mismatch');
  const clientId = details.params.client_id;

  if (req.method === 'GET' && !action) {
    if (details.prompt.name === 'login') return send(res, 200, loginPage(uid, clientId));
    // Any other prompt (consent): grant it without asking.
    return provider.interactionFinished(
      req,
      res,
      { consent: {} },
      { mergeWithLastSubmission: true },
    );
  }
  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const user = findUser(form.get('login'));
    if (!user) return send(res, 200, loginPage(uid, clientId, 'Unknown user'));
    const login = { accountId: user.sub, amr: user.amr, ...(user.acr ? { acr: user.acr } : {}) };
    return provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
  }
  if (req.method === 'POST' && action === 'abort') {
    return provider.interactionFinished(
      req,
      res,
      { error: 'access_denied', error_description: 'End-User aborted interaction' },
      { mergeWithLastSubmission: false },
    );
  }
  return send(res, 404, page('Not found', '<h1>Not found</h1>'));
}

async function handleTestControl(req, res, url) {
  const sub = decodeURIComponent(url.pathname.split('/')[3] ?? '');
  const user = users.find((u) => u.sub === sub);
  if (req.method !== 'POST' || !user) {
    res.writeHead(404, { 'content-type': 'application/json' });
    return res.end('{"error":"unknown user"}');
  }
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const patch = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  for (const [key, value] of Object.entries(patch)) {
    if (key === 'sub') continue;
    if (value === null) delete user[key];
    else user[key] = value;
  }
  res.writeHead(200, { 'content-type': 'application/json' });
  return res.end(JSON.stringify(user));
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, `http://${HOST}`);
  if (url.pathname.startsWith('/__test__/users/')) {
    handleTestControl(req, res, url).catch((err) => {
      process.stderr.write(`test control error: ${err?.stack ?? err}\n`);
      res.end();
    });
    return;
  }
  if (url.pathname.startsWith('/interaction/')) {
    handleInteraction(req, res, url).catch((err) => {
      process.stderr.write(`interaction error: ${err?.stack ?? err}\n`);
      if (!res.headersSent) send(res, 400, page('Error', `<pre id="error">${esc(err)}</pre>`));
      else res.end();
    });
    return;
  }
  callback(req, res);
});

server.listen(requestedPort, HOST, () => {
  const { port } = server.address();
  const issuer = `http://${HOST}:${port}`;
  provider = makeProvider(issuer);
  provider.on('server_error', (_ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));
  callback = provider.callback();
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
