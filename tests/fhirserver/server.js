'use strict';
// In-memory FHIR R4 server for the tests, built on node-fhir-server-core (routing, parameter
// sanitising, CapabilityStatement, bearer authentication through passport). This file only holds
// the storage and the search semantics the tests need.
//
// usage: node server.js --port N [--token T] [--host 127.0.0.1]
//   --port 0 picks a free port; the ready line names the base URL actually bound.
//   --token T: every request except /metadata needs "Authorization: Bearer T" (else 401).

const passport = require('passport');
const BearerStrategy = require('passport-http-bearer').Strategy;
const { Server, ServerError, constants } = require('@asymmetrik/node-fhir-server-core');

const FHIR_VERSION = constants.VERSIONS['4_0_0'];

function parseArgs(argv) {
  const options = { port: null, token: null, host: '127.0.0.1' };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${name} needs a value`);
    if (name === '--port') options.port = Number(value);
    else if (name === '--token') options.token = value;
    else if (name === '--host') options.host = value;
    else throw new Error(`unknown argument ${name} (expected --port, --token, --host)`);
  }
  if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
    throw new Error('--port must be an integer 0..65535');
  }
  return options;
}

// ---------------------------------------------------------------- storage

const stores = {
  Patient: new Map(),
  Observation: new Map(),
  MedicationRequest: new Map(),
  MedicationAdministration: new Map(),
};
let nextId = 1;

function outcome(status, code, text) {
  return new ServerError(text, {
    statusCode: status,
    issue: [{ severity: 'error', code, diagnostics: text }],
  });
}

function storeFor(type) {
  const store = stores[type];
  if (!store) throw outcome(400, 'not-supported', `resource type ${type} is not supported here`);
  return store;
}

function checkResource(type, resource, id) {
  if (!resource || typeof resource !== 'object' || Array.isArray(resource)) {
    throw outcome(400, 'structure', `expected a ${type} resource as JSON object`);
  }
  if (resource.resourceType !== type) {
    throw outcome(400, 'invalid', `resourceType is ${resource.resourceType}, expected ${type}`);
  }
  if (id !== undefined && resource.id !== undefined && resource.id !== id) {
    throw outcome(400, 'invalid', `resource id ${resource.id} does not match the URL id ${id}`);
  }
  if (id !== undefined && !/^[A-Za-z0-9\-.]{1,64}$/.test(id)) {
    throw outcome(400, 'invalid', `id ${id} is not a valid FHIR id`);
  }
}

function save(type, resource, id) {
  const store = storeFor(type);
  const previous = id === undefined ? undefined : store.get(id);
  const newId = id === undefined ? String(nextId++) : id;
  const version = previous ? Number(previous.meta.versionId) + 1 : 1;
  const stored = JSON.parse(JSON.stringify(resource));
  stored.id = newId;
  stored.meta = Object.assign({}, stored.meta, {
    versionId: String(version),
    lastUpdated: new Date().toISOString(),
  });
  store.set(newId, stored);
  return { id: newId, version, created: !previous };
}

// ---------------------------------------------------------------- search

// Search parameters this server evaluates, per type; anything else is refused with 400 (as HAPI's
// plain server does) so that a client's misspelt parameter fails loudly instead of matching all.
const COMMON = ['_id', '_count', '_sort', '_format'];
const SUPPORTED = {
  Patient: [...COMMON],
  Observation: [...COMMON, 'patient', 'subject', 'code', 'date', 'status'],
  MedicationRequest: [...COMMON, 'patient', 'subject', 'code', 'status', 'authoredon'],
  MedicationAdministration: [...COMMON, 'patient', 'subject', 'code', 'status'],
};

function listOf(value) {
  const values = Array.isArray(value) ? value : [value];
  return values.flatMap((v) => String(v).split(',')).filter((v) => v !== '');
}

function tokenMatches(codings, token) {
  const bar = token.indexOf('|');
  const system = bar < 0 ? null : token.slice(0, bar);
  const code = bar < 0 ? token : token.slice(bar + 1);
  return codings.some(
    (c) =>
      (system === null || (system === '' ? !c.system : c.system === system)) &&
      (code === '' || c.code === code)
  );
}

function referenceMatches(reference, wanted, type) {
  if (!reference || typeof reference.reference !== 'string') return false;
  const ref = reference.reference;
  const plain = wanted.startsWith(`${type}/`) ? wanted.slice(type.length + 1) : wanted;
  return ref === `${type}/${plain}` || ref.endsWith(`/${type}/${plain}`);
}

function codingsOf(resource) {
  const concept = resource.code || resource.medicationCodeableConcept || {};
  return Array.isArray(concept.coding) ? concept.coding : [];
}

function effectiveTime(resource) {
  const text =
    resource.effectiveDateTime ||
    resource.effectiveInstant ||
    (resource.effectivePeriod && resource.effectivePeriod.start) ||
    resource.issued ||
    resource.authoredOn;
  const ms = text ? Date.parse(text) : NaN;
  return Number.isNaN(ms) ? null : ms;
}

const DATE_PREFIXES = { eq: (a, b) => a === b, ge: (a, b) => a >= b, le: (a, b) => a <= b, gt: (a, b) => a > b, lt: (a, b) => a < b };

function dateMatches(resource, expression) {
  const prefix = /^(eq|ge|le|gt|lt)/.test(expression) ? expression.slice(0, 2) : 'eq';
  const text = /^(eq|ge|le|gt|lt)/.test(expression) ? expression.slice(2) : expression;
  const wanted = Date.parse(text);
  if (Number.isNaN(wanted)) throw outcome(400, 'invalid', `date ${expression} is not a FHIR date`);
  const actual = effectiveTime(resource);
  return actual !== null && DATE_PREFIXES[prefix](actual, wanted);
}

function filterFor(type, name, rawValue) {
  const values = listOf(rawValue);
  switch (name) {
    case '_id':
      return (r) => values.includes(r.id);
    case 'patient':
    case 'subject':
      return (r) => values.some((v) => referenceMatches(r.subject, v, 'Patient'));
    case 'code':
      return (r) => values.some((v) => tokenMatches(codingsOf(r), v));
    case 'status':
      return (r) => values.includes(r.status);
    case 'date':
    case 'authoredon': {
      // repeated date parameters are ANDed (a range), commas are ORed
      const groups = Array.isArray(rawValue) ? rawValue : [rawValue];
      return (r) => groups.every((g) => listOf(g).some((v) => dateMatches(r, v)));
    }
    default:
      throw outcome(400, 'not-supported', `search parameter ${name} is not supported for ${type}`);
  }
}

function sortKey(name) {
  if (name === 'date' || name === 'authoredon') return effectiveTime;
  if (name === '_lastUpdated') return (r) => Date.parse(r.meta.lastUpdated);
  if (name === '_id') return (r) => r.id;
  throw outcome(400, 'not-supported', `_sort=${name} is not supported`);
}

function compareBy(specs) {
  return (a, b) => {
    for (const { key, descending } of specs) {
      const x = key(a);
      const y = key(b);
      if (x === y) continue;
      if (x === null) return 1; // resources without the sort value come last either way
      if (y === null) return -1;
      const order = x < y ? -1 : 1;
      return descending ? -order : order;
    }
    return 0;
  };
}

function search(type, req) {
  const query = req.query || {};
  for (const name of Object.keys(query)) {
    const base = name.split(':')[0];
    if (!SUPPORTED[type].includes(base) || name.includes(':')) {
      throw outcome(400, 'not-supported', `search parameter ${name} is not supported for ${type}`);
    }
  }
  let matches = [...storeFor(type).values()];
  for (const [name, value] of Object.entries(query)) {
    if (name.startsWith('_') && name !== '_id') continue;
    const keep = filterFor(type, name, value);
    matches = matches.filter(keep);
  }
  matches.sort(compareBy([{ key: (r) => Number(r.id) || 0, descending: false }]));
  if (query._sort !== undefined) {
    const specs = listOf(query._sort).map((s) => ({
      key: sortKey(s.replace(/^-/, '')),
      descending: s.startsWith('-'),
    }));
    matches.sort(compareBy(specs));
  }
  const total = matches.length;
  if (query._count !== undefined) {
    const count = Number(query._count);
    if (!Number.isInteger(count) || count < 0) {
      throw outcome(400, 'invalid', `_count=${query._count} is not a non-negative integer`);
    }
    matches = matches.slice(0, count);
  }
  const base = `${req.protocol}://${req.get('host')}/${FHIR_VERSION}`;
  return {
    resourceType: 'Bundle',
    type: 'searchset',
    total,
    link: [{ relation: 'self', url: `${base}${req.originalUrl.slice(FHIR_VERSION.length + 1)}` }],
    entry: matches.map((r) => ({
      fullUrl: `${base}/${type}/${r.id}`,
      resource: r,
      search: { mode: 'match' },
    })),
  };
}

// ---------------------------------------------------------------- services

function serviceFor(type) {
  return {
    search: async (_args, { req }) => search(type, req),
    searchById: async (args) => {
      const found = storeFor(type).get(args.id);
      if (!found) throw outcome(404, 'not-found', `${type}/${args.id} is not known`);
      return found;
    },
    create: async (_args, { req }) => {
      checkResource(type, req.body);
      const { id, version } = save(type, req.body);
      return { id, resource_version: String(version) };
    },
    update: async (args, { req }) => {
      checkResource(type, req.body, args.id);
      const { id, version, created } = save(type, req.body, args.id);
      return { id, created, resource_version: String(version) };
    },
    remove: async (args) => {
      storeFor(type).delete(args.id);
      return {};
    },
  };
}

// ---------------------------------------------------------------- transaction / batch

// node-fhir-server-core 2.2.5 does not mount its own batch/transaction route (its base-route loop
// never runs), so the Bundle upload is handled here, in process: a transaction is checked whole
// before anything is stored (all or nothing); a batch stores each entry on its own.
function parseEntry(entry, index) {
  const request = entry && entry.request;
  if (!request || typeof request.url !== 'string' || typeof request.method !== 'string') {
    throw outcome(400, 'structure', `entry ${index}: request.method and request.url are required`);
  }
  const method = request.method.toUpperCase();
  const parts = request.url.replace(/^\/+/, '').split('?')[0].split('/');
  const type = parts[0];
  storeFor(type);
  if (method === 'POST' && parts.length === 1) {
    checkResource(type, entry.resource);
    return { method, type, id: undefined, resource: entry.resource, fullUrl: entry.fullUrl };
  }
  if ((method === 'PUT' || method === 'DELETE') && parts.length === 2) {
    if (method === 'PUT') checkResource(type, entry.resource, parts[1]);
    return { method, type, id: parts[1], resource: entry.resource, fullUrl: entry.fullUrl };
  }
  throw outcome(400, 'not-supported', `entry ${index}: ${method} ${request.url} is not supported`);
}

function rewriteReferences(value, mapping) {
  if (Array.isArray(value)) return value.map((v) => rewriteReferences(v, mapping));
  if (value && typeof value === 'object') {
    const copy = {};
    for (const [k, v] of Object.entries(value)) {
      copy[k] = k === 'reference' && typeof v === 'string' && mapping[v] ? mapping[v] : rewriteReferences(v, mapping);
    }
    return copy;
  }
  return value;
}

function applyEntry(parsed, mapping) {
  if (parsed.method === 'DELETE') {
    stores[parsed.type].delete(parsed.id);
    return { status: '204 No Content' };
  }
  const resource = rewriteReferences(parsed.resource, mapping);
  const { id, version, created } = save(parsed.type, resource, parsed.id);
  return {
    status: created ? '201 Created' : '200 OK',
    location: `${parsed.type}/${id}/_history/${version}`,
    etag: `W/"${version}"`,
  };
}

function errorResponse(err) {
  const status = (err && err.statusCode) || 500;
  return {
    response: {
      status: String(status),
      outcome: { resourceType: 'OperationOutcome', issue: err.issue || [{ severity: 'error', code: 'exception', diagnostics: String(err.message) }] },
    },
  };
}

function bundleHandler(req, res, next) {
  try {
    const bundle = req.body;
    if (!bundle || bundle.resourceType !== 'Bundle') throw outcome(400, 'invalid', 'expected a Bundle');
    if (bundle.type !== 'transaction' && bundle.type !== 'batch') {
      throw outcome(400, 'invalid', `Bundle.type must be transaction or batch, not ${bundle.type}`);
    }
    const entries = Array.isArray(bundle.entry) ? bundle.entry : [];
    let responses;
    if (bundle.type === 'transaction') {
      const parsed = entries.map(parseEntry);
      // POSTed entries get their ids first so that urn:uuid references between entries resolve
      const mapping = {};
      for (const p of parsed) {
        if (p.method === 'POST') p.id = String(nextId++);
        if (p.fullUrl && p.method !== 'DELETE') mapping[p.fullUrl] = `${p.type}/${p.id}`;
      }
      responses = parsed.map((p) => ({ response: applyEntry(p, mapping) }));
    } else {
      responses = entries.map((entry, index) => {
        try {
          return { response: applyEntry(parseEntry(entry, index), {}) };
        } catch (err) {
          return errorResponse(err);
        }
      });
    }
    res.type('application/fhir+json');
    res.status(200).json({ resourceType: 'Bundle', type: `${bundle.type}-response`, entry: responses });
  } catch (err) {
    next(err);
  }
}

// ---------------------------------------------------------------- start

function main() {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`fhir server: ${err.message}\n`);
    process.exit(2);
  }
  const config = {
    profiles: {},
    server: { port: options.port },
    logging: { level: 'warn' },
  };
  for (const type of Object.keys(stores)) {
    config.profiles[type] = { service: serviceFor(type), versions: [FHIR_VERSION] };
  }
  let authenticate = (_req, _res, next) => next();
  if (options.token) {
    passport.use(
      new BearerStrategy((token, done) =>
        token === options.token ? done(null, { id: 'test-client' }, { scope: 'all' }) : done(null, false)
      )
    );
    // Only the strategy name is read here: the core then guards every route but /metadata.
    config.auth = { strategy: { name: 'bearer', useSession: false } };
    authenticate = passport.authenticate('bearer', { session: false });
  }
  const server = new Server(config)
    .configureMiddleware()
    .configureSession()
    .configureHelmet()
    .setPublicDirectory()
    .setProfileRoutes();
  server.app.post([`/${FHIR_VERSION}`, `/${FHIR_VERSION}/`], authenticate, bundleHandler);
  server.setErrorRoutes();
  const listener = server.app.listen(options.port, options.host, () => {
    const { address, port } = listener.address();
    process.stdout.write(`FHIR server ready at http://${address}:${port}/${FHIR_VERSION}\n`);
  });
  listener.on('error', (err) => {
    process.stderr.write(`fhir server: ${err.message}\n`);
    process.exit(1);
  });
  const stop = () => listener.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
