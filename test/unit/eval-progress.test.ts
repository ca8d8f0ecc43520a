import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Progress } from '../../src/eval/progress.js';

function sink(isTTY: boolean) {
  const out: string[] = [];
  return { out, s: { isTTY, write: (x: string) => out.push(x) } };
}

test('progress on a terminal: a redrawn bar, throttled, cleared at the end', () => {
  let now = 1000;
  const { out, s } = sink(true);
  const p = new Progress(s, () => now);
  p.update('fit', 0.1);
  now += 10;
  p.update('fit', 0.2); // within 100 ms: skipped
  now += 200;
  p.update('fit', 0.5);
  p.done();
  assert.equal(out.length, 3);
  assert.match(out[0], /^\r.* 10% fit/);
  assert.match(out[1], /^\r.* 50% fit/);
  assert.equal(out[2], '\r\x1b[K');
});

test('progress without a terminal: one line per finished stage, and one per 15 s', () => {
  let now = 1000;
  const { out, s } = sink(false);
  const p = new Progress(s, () => now);
  for (let i = 0; i < 10; i++) p.update('score', i / 10);
  now += 16000;
  p.update('score', 0.95);
  p.update('score', 1);
  p.update('score', 1);
  assert.deepEqual(out, ['score: 95%\n', 'score: 100%\n']);
  assert.ok(out.every((l) => !l.includes('\r')));
});
