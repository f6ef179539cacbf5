// A flow worker for pgflow for TypeScript (@pgflow/core), driven by the benchmarks.
//
// It follows the edge worker's loop, one batch at a time: read a batch of messages with
// pgmq.read_with_poll, claim their tasks with pgflow.start_tasks, run the handlers with at
// most `concurrency` at once, complete each with pgflow.complete_task, and only then read
// again. It registers itself in pgflow.workers (start_tasks records the worker id) and
// sends a heartbeat like the edge worker. It prints "ready" once registered and stops after
// the batch in hand on SIGTERM.
//
// usage: node worker.mjs URL FLOW_SLUG BATCH CONCURRENCY VISIBILITY_S MAX_POLL_S
//                        POLL_INTERVAL_MS MAX_CONNECTIONS
// The `pg` package is loaded from $PGFLOW_TS_NODE_MODULES (the benchmark's npm cache).

import { createRequire } from 'node:module';
import { randomUUID } from 'node:crypto';
import path from 'node:path';

const HEARTBEAT_MS = 5000;

function parseArgs(argv) {
  if (argv.length !== 8) {
    throw new Error(
      'usage: worker.mjs URL FLOW_SLUG BATCH CONCURRENCY VISIBILITY_S MAX_POLL_S ' +
        'POLL_INTERVAL_MS MAX_CONNECTIONS'
    );
  }
  const [url, flow, ...numbers] = argv;
  const [batch, concurrency, visibility, maxPoll, pollInterval, connections] = numbers.map(
    (text) => {
      const value = Number.parseInt(text, 10);
      if (!Number.isInteger(value) || value < 1) {
        throw new Error(`not a positive integer: ${text}`);
      }
      return value;
    }
  );
  return { url, flow, batch, concurrency, visibility, maxPoll, pollInterval, connections };
}

// The benchmark's step handlers, by step slug; any other step passes a small object on.
const HANDLERS = {
  seed: (input) => Array.from({ length: input.run.n }, (_, i) => i),
  each: (item) => item * 2,
  gather: (input) => ({ total: input.each.length }),
};

function handle(task) {
  const handler = HANDLERS[task.step_slug];
  return handler ? handler(task.input) : { step: task.step_slug };
}

// Runs `jobs` (functions returning promises) with at most `limit` at a time.
async function runLimited(jobs, limit) {
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, jobs.length) }, async () => {
    while (next < jobs.length) {
      const job = jobs[next];
      next += 1;
      await job();
    }
  });
  await Promise.all(lanes);
}

async function main() {
  const settings = parseArgs(process.argv.slice(2));
  const modules = process.env.PGFLOW_TS_NODE_MODULES;
  if (!modules) {
    throw new Error('PGFLOW_TS_NODE_MODULES is not set');
  }
  const require = createRequire(path.join(modules, 'index.js'));
  const pg = require('pg');
  const pool = new pg.Pool({ connectionString: settings.url, max: settings.connections });
  const workerId = randomUUID();
  await pool.query(
    'INSERT INTO pgflow.workers (worker_id, queue_name, function_name) VALUES ($1, $2, $3)',
    [workerId, settings.flow, 'pgflow-bench-node-worker']
  );
  const heartbeat = setInterval(() => {
    pool
      .query('UPDATE pgflow.workers SET last_heartbeat_at = now() WHERE worker_id = $1', [
        workerId,
      ])
      .catch((error) => console.error(`heartbeat failed: ${error.message}`));
  }, HEARTBEAT_MS);

  let stopping = false;
  process.on('SIGTERM', () => {
    stopping = true;
  });
  process.stdout.write('ready\n');

  while (!stopping) {
    const read = await pool.query(
      'SELECT msg_id FROM pgmq.read_with_poll(queue_name => $1, vt => $2, qty => $3, ' +
        'max_poll_seconds => $4, poll_interval_ms => $5)',
      [settings.flow, settings.visibility, settings.batch, settings.maxPoll, settings.pollInterval]
    );
    if (read.rows.length === 0 || stopping) {
      continue;
    }
    const started = await pool.query(
      'SELECT * FROM pgflow.start_tasks(flow_slug => $1, msg_ids => $2::bigint[], ' +
        'worker_id => $3::uuid)',
      [settings.flow, read.rows.map((row) => row.msg_id), workerId]
    );
    const jobs = started.rows.map((task) => async () => {
      const output = handle(task);
      await pool.query(
        'SELECT pgflow.complete_task(run_id => $1::uuid, step_slug => $2::text, ' +
          'task_index => $3::int, output => $4::jsonb)',
        [task.run_id, task.step_slug, task.task_index, JSON.stringify(output)]
      );
    });
    await runLimited(jobs, settings.concurrency);
  }
  clearInterval(heartbeat);
  await pool.query('UPDATE pgflow.workers SET deprecated_at = now() WHERE worker_id = $1', [
    workerId,
  ]);
  await pool.end();
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : String(error));
  process.exit(1);
});
