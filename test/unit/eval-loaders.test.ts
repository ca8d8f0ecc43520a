import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { isValidationError } from '../../src/errors.js';
import { loadCsv } from '../../src/eval/csv-loader.js';
import { loadLinesSplit } from '../../src/eval/lines-split.js';
import { PRESETS } from '../../src/eval/presets.js';
import { planModels } from '../../src/eval/model-registry.js';
import { parseFilter, passes } from '../../src/eval/row-filter.js';

const dir = mkdtempSync(join(tmpdir(), 'localrec-eval-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, body: string | Buffer): string => {
  const p = join(dir, name);
  writeFileSync(p, body);
  return p;
};

const RATINGS = 'userId,movieId,rating,timestamp\n1,10,4.0,100\n1,11,3.5,90\n2,10,5,95\n';

test('csv: maps columns by name, interns ids in file order', async () => {
  const log = await loadCsv(file('r.csv', RATINGS), { user: 'userId', item: 'movieId', time: 'timestamp', weight: 'rating' });
  assert.deepEqual(log.userIds, ['1', '2']);
  assert.deepEqual(log.itemIds, ['10', '11']);
  assert.deepEqual([...log.user], [0, 0, 1]);
  assert.deepEqual([...log.item], [0, 1, 0]);
  assert.deepEqual([...log.time], [100, 90, 95]);
  assert.deepEqual([...log.weight], [4, 3.5, 5]);
});

test('csv: gzip is detected from the content, not the name', async () => {
  const log = await loadCsv(file('r.bin', gzipSync(RATINGS)), { user: 'userId', item: 'movieId' });
  assert.equal(log.user.length, 3);
  assert.deepEqual([...log.weight], [1, 1, 1]);
  assert.deepEqual([...log.time], [0, 0, 0]);
});

test('csv: a bad cell names file, line and column', async () => {
  const p = file('bad.csv', 'userId,movieId,rating,timestamp\n1,10,4,100\n1,11,4,yesterday-ish\n');
  await assert.rejects(
    loadCsv(p, { user: 'userId', item: 'movieId', time: 'timestamp' }),
    (e: unknown) => isValidationError(e) && e.field === 'bad.csv:3:timestamp' && /not a number or a date/.test(e.message),
  );
  const empty = file('empty-item.csv', 'userId,movieId\n1,10\n2,\n');
  await assert.rejects(
    loadCsv(empty, { user: 'userId', item: 'movieId' }),
    (e: unknown) => isValidationError(e) && e.field === 'empty-item.csv:3:movieId',
  );
  const weight = file('w.csv', 'u,i,w\n1,2,3\n1,3,x\n');
  await assert.rejects(loadCsv(weight, { user: 'u', item: 'i', weight: 'w' }), (e: unknown) => isValidationError(e) && e.field === 'w.csv:3:w');
});

test('csv: unknown column and missing file are clear errors', async () => {
  await assert.rejects(
    loadCsv(file('r2.csv', RATINGS), { user: 'user', item: 'movieId' }),
    (e: unknown) => isValidationError(e) && e.field === 'options.user' && /header: userId, movieId/.test(e.message),
  );
  await assert.rejects(loadCsv(join(dir, 'nope.csv'), { user: 'u', item: 'i' }), (e: unknown) => isValidationError(e) && /ENOENT/.test(e.message));
});

test('csv: a ragged line is reported with its line number', async () => {
  const p = file('ragged.csv', 'u,i\n1,2\n1,2,3\n');
  await assert.rejects(loadCsv(p, { user: 'u', item: 'i' }), (e: unknown) => isValidationError(e) && e.field === 'ragged.csv:3');
});

test('filters: operators, and the retail preset keeps only real purchases', async () => {
  assert.deepEqual(parseFilter('quantity>=2'), { column: 'quantity', op: '>=', value: '2' });
  assert.equal(passes(parseFilter('invoice!^=C'), 'C536379'), false);
  assert.equal(passes(parseFilter('invoice!^=C'), '536379'), true);
  assert.equal(passes(parseFilter('customer_id!='), ''), false);
  assert.equal(passes(parseFilter('q>0'), 'abc'), false);
  assert.throws(() => parseFilter('quantity'), (e: unknown) => isValidationError(e) && /OP one of/.test(e.message));
  assert.throws(() => parseFilter('q>x'), (e: unknown) => isValidationError(e) && /needs a number/.test(e.message));
  // An empty value is no number (Number('') is 0: `qty>` read as `qty>0`).
  for (const c of ['qty>', 'qty>= ', 'qty<']) assert.throws(() => parseFilter(c), (e: unknown) => isValidationError(e) && /needs a number, got ''/.test(e.message), c);
  // Model parameters too: `knn-shrink=` was 0.
  assert.throws(() => planModels('itemknn:knn-shrink=', {}), (e: unknown) => isValidationError(e) && /must be a number in \[0, 1000000000\], got ''/.test(e.message));
  const retail = [
    'invoice,stock_code,description,quantity,timestamp,unit_price,customer_id,country',
    '536365,85123A,"HEART, WHITE",6,1291191960,2.55,17850,United Kingdom',
    'C536379,D,Discount,-1,1291196000,27.5,14527,United Kingdom',
    '536380,22961,JAM,0,1291197000,1,14527,United Kingdom',
    '536381,22961,JAM,24,1291198000,1,,United Kingdom',
    '536382,22961,JAM,2,1291199000,1,14527,United Kingdom',
  ].join('\n');
  const log = await loadCsv(file('retail.csv.gz', gzipSync(retail)), { ...PRESETS.retail, weight: 'quantity' });
  assert.deepEqual(log.userIds, ['17850', '14527']);
  assert.deepEqual(log.itemIds, ['85123A', '22961']);
  assert.deepEqual([...log.weight], [6, 2]);
});

test('lines: given split, dedup, recency by position, users only in test', async () => {
  const train = file('train.txt', 'u1 a b a c\nu2 b\n\nu1 d\n');
  const testFile = file('test.txt', 'u1 e b\nu3 a\nu2 b\n');
  const s = await loadLinesSplit(train, testFile);
  assert.deepEqual(s.userIds, ['u1', 'u2', 'u3']);
  const u1 = [...s.train.items.subarray(s.train.ptr[0], s.train.ptr[1])].map((i) => s.itemIds[i]);
  assert.deepEqual(u1, ['a', 'b', 'c', 'd']);
  // Sequence a b a c d: last positions a=2, b=1, c=3, d=4 → steps back 2, 3, 1, 0.
  assert.deepEqual([...s.train.recency.subarray(s.train.ptr[0], s.train.ptr[1])], [2, 3, 1, 0]);
  assert.deepEqual([...s.train.count.subarray(s.train.ptr[0], s.train.ptr[1])], [2, 1, 1, 1]);
  // u2's only test item, b, is on its training line (every model masks it: it could never be hit):
  // left out, and u2 is not tested; u1's b likewise. u3 has no training line, no history to rank
  // from (every model would rank alike for it): not tested either.
  assert.deepEqual([...s.testUsers], [0]);
  assert.equal(s.test.ptr[3] - s.test.ptr[2], 0);
  assert.deepEqual([...s.test.items.subarray(s.test.ptr[0], s.test.ptr[1])].map((i) => s.itemIds[i]), ['e']);
  assert.equal(s.train.ptr[3] - s.train.ptr[2], 0);
  await assert.rejects(loadLinesSplit(file('t1.txt', 'u1 a\nu2\n'), testFile), (e: unknown) => isValidationError(e) && e.field === 't1.txt:2:2');
  // An empty training file: refused, not metrics of nobody (they printed HR 1).
  await assert.rejects(loadLinesSplit(file('empty.txt', '\n'), testFile), /^ValidationError: options\.train: '.*empty\.txt' holds no training lines/);
});

test('csv: a line of spaces or of empty cells is skipped, like an empty one; a short record is named', async () => {
  const log = await loadCsv(file('blank.csv', 'u,i,t\r\nu1,a,1\r\n   \r\nu1,b,2\r\n,,\r\nu2,c,3\r\n'), { user: 'u', item: 'i', time: 't' });
  assert.deepEqual([log.userIds, [...log.time]], [['u1', 'u2'], [1, 2, 3]]);
  await assert.rejects(loadCsv(file('short.csv', 'u,i,t\nu1,a,1\nu1,b\n'), { user: 'u', item: 'i', time: 't' }), (e: unknown) =>
    isValidationError(e) && e.field === 'short.csv:3' && /has 2 fields, the header has 3/.test(e.message));
});

test('csv: filters see trimmed cells, a duplicate column name is refused, a date without a zone is UTC', async () => {
  // A customer id of spaces is empty: the retail preset's `customer_id!=` drops the row.
  const log = await loadCsv(file('ws.csv', 'customer_id,stock_code,timestamp\nc1,a,1\n   ,b,2\nc2,c,3\n'), { user: 'customer_id', item: 'stock_code', time: 'timestamp', filters: [parseFilter('customer_id!=')] });
  assert.deepEqual(log.userIds, ['c1', 'c2']);
  await assert.rejects(
    loadCsv(file('dup.csv', 'user,item,item\nu,a,b\n'), { user: 'user', item: 'item' }),
    (e: unknown) => isValidationError(e) && e.field === 'options.item' && /column 'item' appears more than once in dup\.csv/.test(e.message),
  );
  const dated = await loadCsv(file('dates.csv', 'u,i,t\nu,a,2010-12-01 08:26:00\nu,b,2010-12-01T08:26:00+01:00\n'), { user: 'u', item: 'i', time: 't' });
  assert.deepEqual([...dated.time], [Date.UTC(2010, 11, 1, 8, 26) / 1000, Date.UTC(2010, 11, 1, 7, 26) / 1000]);
  // The UCI original's month-first form and a one-digit hour are UTC too (Date.parse read them in the
  // machine's zone: a daylight-saving change could reorder events and hold out another item).
  const us = await loadCsv(file('us.csv', 'u,i,t\nu,a,12/1/2010 8:26\nu,b,2010-12-01 8:26\nu,c,3/14/2010 2:30\n'), { user: 'u', item: 'i', time: 't' });
  assert.deepEqual([...us.time], [Date.UTC(2010, 11, 1, 8, 26) / 1000, Date.UTC(2010, 11, 1, 8, 26) / 1000, Date.UTC(2010, 2, 14, 2, 30) / 1000]);
  // Any other zoneless form would depend on the machine: refused, naming the cell.
  await assert.rejects(loadCsv(file('local.csv', 'u,i,t\nu,a,Dec 1 2010 08:26\n'), { user: 'u', item: 'i', time: 't' }), (e: unknown) =>
    isValidationError(e) && e.field === 'local.csv:2:t' && /has no time zone and is not in a form read as UTC/.test(e.message));
  await assert.rejects(loadCsv(file('typo.csv', 'u,i,t\nu,a,2/30/2010 1:00\n'), { user: 'u', item: 'i', time: 't' }), /'2\/30\/2010 1:00' is not a number or a date/);
  // Milliseconds would make every event its own session: refused, saying what it looks like.
  await assert.rejects(loadCsv(file('ms.csv', 'u,i,t\nu,a,1291191960000\n'), { user: 'u', item: 'i', time: 't' }), (e: unknown) =>
    isValidationError(e) && e.field === 'ms.csv:2:t' && /1291191960000 looks like milliseconds/.test(e.message));
});

test('text that is not UTF-8 is refused naming the file and line; UTF-8 split across read chunks, a UTF-8 or UTF-16 BOM and gzip pass (stop 32)', async () => {
  // Windows-1252: é = 0xE9, è = 0xE8. Decoded leniently both were "Caf\uFFFD", one item.
  const cp1252 = Buffer.concat([Buffer.from('user,item\nu1,Caf'), Buffer.from([0xe9]), Buffer.from('\nu2,Caf'), Buffer.from([0xe8]), Buffer.from('\n')]);
  const refused = (line: number) => (e: unknown) => isValidationError(e) && e.field === 'options.data' && new RegExp(`is not UTF-8 text \\(line ${line}, byte 0xe9\\): convert it first`).test(e.message);
  await assert.rejects(loadCsv(file('cp1252.csv', cp1252), { user: 'user', item: 'item' }), refused(2));
  await assert.rejects(loadCsv(file('cp1252.csv.gz', gzipSync(cp1252)), { user: 'user', item: 'item' }), refused(2));
  await assert.rejects(loadLinesSplit(file('cp1252.txt', Buffer.concat([Buffer.from('u1 a\nu2 Caf'), Buffer.from([0xe9, 0x0a])])), file('t.txt', 'u1 a\n')), (e: unknown) => isValidationError(e) && e.field === 'options.train' && /line 2/.test(e.message));
  // A truncated character at the very end.
  await assert.rejects(loadCsv(file('cut.csv', Buffer.concat([Buffer.from('user,item\nu1,a\nu2,'), Buffer.from([0xe2, 0x82])])), { user: 'user', item: 'item' }), /is not UTF-8 text \(line 3, byte 0xe2\)/);
  // Multi-byte characters on every read-chunk boundary (64 KiB): "€" is 3 bytes, "😀" 4.
  const rows = Array.from({ length: 20_000 }, (_, i) => `u${i % 97},${i % 2 ? '€' : '😀'}${i % 13}`);
  const big = 'user,item\n' + rows.join('\n') + '\n';
  const log = await loadCsv(file('big.csv', big), { user: 'user', item: 'item' });
  assert.equal(log.user.length, 20_000);
  assert.deepEqual(new Set(log.itemIds), new Set(rows.map((r) => r.split(',')[1]!)));
  // A UTF-8 byte-order mark, and UTF-16 with its mark (Excel's "Unicode text"), are read as before.
  assert.deepEqual((await loadCsv(file('bom.csv', '\uFEFFuser,item\r\nu1,Ω\r\n'), { user: 'user', item: 'item' })).itemIds, ['Ω']);
  const u16 = Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('user,item\nu1,a\nu2,é\n', 'utf16le')]);
  assert.deepEqual((await loadCsv(file('u16.csv', u16), { user: 'user', item: 'item' })).itemIds, ['a', 'é']);
  // Refused, saying so, where no reader decodes it: UTF-16BE, and UTF-16 for the lines files.
  const be = Buffer.concat([Buffer.from([0xfe, 0xff]), Buffer.from('user,item\nu1,a\n', 'utf16le').swap16()]);
  await assert.rejects(loadCsv(file('be.csv', be), { user: 'user', item: 'item' }), /'.*be\.csv' is UTF-16BE text, which this reader does not take: convert it to UTF-8 first/);
  await assert.rejects(loadLinesSplit(file('u16.txt', Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('u1 a\n', 'utf16le')])), file('t16.txt', 'u1 a\n')), /is UTF-16LE text, which this reader does not take/);
});

test('a numeric --filter refuses a cell that is not a number (a decimal comma) instead of dropping its row; empty cells still fail it (stop 32)', async () => {
  const body = 'user,item,rating\nu1,a,4\nu2,b,"4,5"\nu3,c,\n';
  await assert.rejects(
    loadCsv(file('de.csv', body), { user: 'user', item: 'item', filters: [parseFilter('rating>=4')] }),
    (e: unknown) => isValidationError(e) && e.field === 'de.csv:3:rating' && /'4,5' is not a number, which the filter rating>=4 compares \(plain decimals only\)/.test(e.message),
  );
  const kept = await loadCsv(file('ok.csv', 'user,item,rating\nu1,a,4\nu2,b,3\nu3,c,\n'), { user: 'user', item: 'item', filters: [parseFilter('rating>=4')] });
  assert.deepEqual(kept.itemIds, ['a']);
});

test('a numeric cell is read as a plain decimal only: hexadecimal, binary or Infinity in a weight, a time or a filtered column is refused naming the cell, not read as 16 (stop 40)', async () => {
  for (const [cell, col] of [['0x10', 'rating'], ['0b11', 'rating'], ['Infinity', 'rating'], ['0x5f5e100', 'timestamp']] as const) {
    const body = `userId,movieId,rating,timestamp\n1,10,4,100\n1,11,${col === 'rating' ? cell : 4},${col === 'timestamp' ? cell : 90}\n`;
    await assert.rejects(
      loadCsv(file('hex.csv', body), { user: 'userId', item: 'movieId', weight: 'rating', time: 'timestamp' }),
      (e: unknown) => isValidationError(e) && e.field === `hex.csv:3:${col}`,
      cell,
    );
    if (col === 'rating') {
      await assert.rejects(
        loadCsv(file('hexf.csv', body), { user: 'userId', item: 'movieId', filters: [parseFilter('rating<5')] }),
        (e: unknown) => isValidationError(e) && e.field === 'hexf.csv:3:rating' && /is not a number, which the filter rating<5 compares \(plain decimals only\)/.test(e.message),
        cell,
      );
    }
  }
  assert.throws(() => parseFilter('rating<0x10'), /rating<0x10': < needs a number, got '0x10'/);
  assert.equal(passes(parseFilter('rating<5'), '0x1'), false, 'a cell that is no plain decimal fails a numeric filter');
  // Plain decimals in every form still load.
  const ok = await loadCsv(file('dec.csv', 'u,i,w,t\n1,a,.5,1e9\n1,b,2.,+100\n1,c,1E1,7\n'), { user: 'u', item: 'i', weight: 'w', time: 't' });
  assert.deepEqual([...ok.weight], [0.5, 2, 10]);
  assert.deepEqual([...ok.time], [1e9, 100, 7]);
});

test('a negative weight (a return, a cancellation) is refused naming the cell, not counted as its size (stop 40)', async () => {
  await assert.rejects(
    loadCsv(file('neg.csv', 'u,i,rating\n1,a,4\n1,b,-2\n'), { user: 'u', item: 'i', weight: 'rating' }),
    (e: unknown) => isValidationError(e) && e.field === 'neg.csv:3:rating' && /'-2' is negative: .*--filter 'rating>=0'/.test(e.message),
  );
  // Such rows filtered out, the rest loads; a weight of 0 is allowed.
  const kept = await loadCsv(file('neg2.csv', 'u,i,rating\n1,a,4\n1,b,-2\n1,c,0\n'), { user: 'u', item: 'i', weight: 'rating', filters: [parseFilter('rating>=0')] });
  assert.deepEqual(kept.itemIds, ['a', 'c']);
  assert.deepEqual([...kept.weight], [4, 0]);
});

test('lines: a training line of 200,000 items loads (no spread into push, which overflowed the stack at about 130,000) (stop 40)', async () => {
  const items = Array.from({ length: 200_000 }, (_, i) => `i${i}`).join(' ');
  const s = await loadLinesSplit(file('long.txt', `u1 ${items}\nu2 i1 i2\n`), file('long-test.txt', 'u1 x\nu2 i3\n'));
  assert.equal(s.trainEvents.items.length, 200_002);
  assert.deepEqual([...s.testUsers], [0, 1]);
  assert.equal(s.test.ptr[2] - s.test.ptr[0], 2);
});

test('lines: a test file that leaves nobody to test says why: no test items, users without a training line, or only items already trained on (stop 40)', async () => {
  const train = file('why-train.txt', 'u1 a b\nu2 b c\n');
  const refused = (testBody: string, re: RegExp) =>
    assert.rejects(loadLinesSplit(train, file('why-test.txt', testBody)), (e: unknown) => isValidationError(e) && e.field === 'options.test' && re.test(e.message), testBody);
  await refused('', /'why-test\.txt' holds no test items/);
  await refused('u1\n', /'why-test\.txt' holds no test items/);
  await refused('x1 a\nx2 b\n', /of the 2 users with test items in 'why-test\.txt', 2 have no training line in 'why-train\.txt' .*and 0 have only items already in their training history/);
  await refused('u1 a\nu2 c b\nx1 a\n', /of the 3 users with test items in 'why-test\.txt', 1 has no training line .* and 2 have only items already in their training history/);
});

test('csv: a bad cell after a quoted cell spanning lines is named on its own line, a CRLF inside quotes counting once (stop 41)', async () => {
  // Lines: 1 header; 2–3 a CRLF inside quotes; 4 blank; 5–6 an LF inside quotes; 7 the bad row.
  const body = 'u,i,t\r\n1,"two\r\nlines",1\r\n\r\n2,"two\nlines",2\r\n3,c,yesterday\r\n';
  await assert.rejects(loadCsv(file('spans.csv', body), { user: 'u', item: 'i', time: 't' }), (e: unknown) => isValidationError(e) && e.field === 'spans.csv:7:t', 'the row after them');
  // A cell after a line break within its row is named on the line it starts on.
  await assert.rejects(
    loadCsv(file('within.csv', 'u,i,t\r\n1,"two\r\nlines",later\r\n'), { user: 'u', item: 'i', time: 't' }),
    (e: unknown) => isValidationError(e) && e.field === 'within.csv:3:t',
  );
  await assert.rejects(
    loadCsv(file('short.csv', 'u,i,t\r\n1,"a\r\nb",1\r\n1,a\r\n'), { user: 'u', item: 'i', time: 't' }),
    (e: unknown) => isValidationError(e) && e.field === 'short.csv:4' && /has 2 fields, the header has 3/.test(e.message),
  );
  await assert.rejects(
    loadCsv(file('open-after.csv', 'u,i\r\n1,"a\r\nb"\r\n2,"open\r\n3,c\r\n'), { user: 'u', item: 'i' }),
    (e: unknown) => isValidationError(e) && e.field === 'open-after.csv:4' && /never closed/.test(e.message),
  );
});

test('csv: rows appended with other line endings (LF after CRLF, CR) read one per line; an unclosed quote is named on the line its row starts (stop 40)', async () => {
  const mixed = await loadCsv(file('mixed.csv', 'u,i\r\n1,a\r\n2,b\n3,c\r4,"x\r\ny"\n'), { user: 'u', item: 'i' });
  assert.deepEqual(mixed.userIds, ['1', '2', '3', '4']);
  assert.deepEqual(mixed.itemIds, ['a', 'b', 'c', 'x\r\ny'], 'a line break inside quotes stays in the field');
  const rows = Array.from({ length: 50 }, (_, k) => `${k},i${k}`);
  rows.splice(2, 0, '', '', '99,"unclosed'); // blank lines before it count too
  await assert.rejects(
    loadCsv(file('open-quote.csv', ['u,i', ...rows].join('\n')), { user: 'u', item: 'i' }),
    (e: unknown) => isValidationError(e) && e.field === 'open-quote.csv:6' && /a quote opened in the row starting here is never closed/.test(e.message),
  );
});
