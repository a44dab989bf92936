// spec/bench/sdk_regenerate.js: the official Genesys Cloud JS SDK (npm purecloud-platform-client-v2)
// regenerating N client secrets (OAuthApi.postOauthClientSecret) with C workers, against the
// simulator. Driven by spec/bench/run.lua; one round per process (cold connections, like rotor's
// round). The SDK uses axios on Node's default https agent (keep-alive). The admin secret and the
// client ids come from files (never a command line); the CA from NODE_EXTRA_CA_CERTS.
//   env: ROTOR_SIM_URL, ROTOR_BENCH_SDK_DIR (where node_modules is), ROTOR_BENCH_CLIENT_ID,
//        ROTOR_BENCH_SECRET_FILE, ROTOR_BENCH_IDS_FILE (one id a line), ROTOR_BENCH_CONCURRENCY,
//        ROTOR_BENCH_WARMUP (untimed regenerates first, on the first ids: JIT and connections warm),
//        ROTOR_BENCH_PERSIST_DIR (optional: each new secret is then kept as the least a script must
//        do not to lose a secret shown once: written to a temporary file (0600), fsynced, renamed
//        to <client id>.json and the directory fsynced, before the call counts as done)
// Prints: ROTOR_SDK <ok> <failed> <seconds of the timed part> <connections opened>
'use strict';
const fs = require('fs');
const path = require('path');
const https = require('https');

// count the connections the SDK's agent opens (axios uses Node's global https agent)
let connections = 0;
const createConnection = https.globalAgent.createConnection;
https.globalAgent.createConnection = function (...args) {
  connections++;
  return createConnection.apply(this, args);
};

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error('sdk_regenerate.js: ' + k + ' is not set');
  return v;
};
const platformClient = require(path.resolve(env('ROTOR_BENCH_SDK_DIR'), 'node_modules', 'purecloud-platform-client-v2'));

const persistDir = process.env.ROTOR_BENCH_PERSIST_DIR;

async function persist(id, secret) {
  const file = path.join(persistDir, id + '.json');
  const tmp = file + '.tmp';
  const fh = await fs.promises.open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(JSON.stringify({ client_id: id, secret }));
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.promises.rename(tmp, file);
  const dir = await fs.promises.open(persistDir, 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

async function main() {
  if (persistDir) fs.mkdirSync(persistDir, { recursive: true, mode: 0o700 });
  const url = new URL(env('ROTOR_SIM_URL'));
  const secret = fs.readFileSync(env('ROTOR_BENCH_SECRET_FILE'), 'utf8').trim();
  const ids = fs.readFileSync(env('ROTOR_BENCH_IDS_FILE'), 'utf8').split('\n').filter(Boolean);
  const conc = parseInt(process.env.ROTOR_BENCH_CONCURRENCY || '16', 10);
  const client = platformClient.ApiClient.instance;
  client.setGateway({ host: url.hostname, protocol: 'https', port: parseInt(url.port, 10),
    path_params_login: 'genesys/login', path_params_api: 'genesys' });
  await client.loginClientCredentialsGrant(env('ROTOR_BENCH_CLIENT_ID'), secret);
  const api = new platformClient.OAuthApi();
  let ok = 0, failed = 0;
  async function run(list) {
    let next = 0;
    async function worker() {
      while (next < list.length) {
        const id = list[next++];
        try {
          const c = await api.postOauthClientSecret(id);
          if (c && typeof c.secret === 'string' && c.secret.length > 0) {
            if (persistDir) await persist(id, c.secret);
            ok++;
          } else {
            failed++;
          }
        } catch (e) {
          failed++;
        }
      }
    }
    const workers = [];
    for (let i = 0; i < conc; i++) workers.push(worker());
    await Promise.all(workers);
  }
  await run(ids.slice(0, parseInt(process.env.ROTOR_BENCH_WARMUP || '0', 10)));
  ok = 0;
  failed = 0;
  const t0 = process.hrtime.bigint();
  await run(ids);
  const dt = Number(process.hrtime.bigint() - t0) / 1e9;
  process.stdout.write(`ROTOR_SDK ${ok} ${failed} ${dt} ${connections}\n`);
}

main().catch((e) => {
  process.stderr.write('sdk_regenerate.js: ' + (e && e.message ? e.message : 'failed') + '\n');
  process.exit(1);
});
