/**
 * `localrec privacy`: calibrates the noise multiplier σ of `localrec serve --noise` against the
 * devices' ε budget, with the very accountant `sync()` uses (exact composition of Gaussian
 * releases, δ as given). Either the smallest σ for a number of syncs per device, or the syncs a
 * device can make at a given σ. One JSON line on stdout.
 */
import type { Command } from 'commander';
import { ValidationError } from '../errors.js';
import { numberFlag } from '../number-flag.js';

export interface PrivacyCommandOptions {
  budget: string;
  delta: string;
  syncs?: string;
  noise?: string;
}

/** The line `localrec privacy` prints. */
export interface PrivacyLine {
  budget: number;
  delta: number;
  noiseMultiplier: number;
  /** Syncs a fresh device can make at this σ within the budget. */
  syncs: number;
  /** Present (true) when `syncs` is the accountant's cap (1,000,000): σ allows at least that many. */
  syncsCapped?: true;
  /** ε after those syncs (exact; what `stats()` reports), and the RDP bound for the same releases. */
  epsilon: number;
  epsilonRdp: number;
  /** ε after one sync. */
  epsilonPerSync: number;
}

const num = numberFlag;

/** The body of the command, apart from commander (tests call it with plain options). */
export async function runPrivacy(opts: PrivacyCommandOptions): Promise<PrivacyLine> {
  const { MAX_COUNTED_SYNCS, noiseForSyncs, RdpAccountant, syncsWithinBudget } = await import('./dp.js');
  const budget = num('--budget', opts.budget, (x) => Number.isFinite(x) && x > 0, 'a finite number > 0');
  const delta = num('--delta', opts.delta, (x) => x > 0 && x < 1, 'in (0, 1)');
  if ((opts.syncs === undefined) === (opts.noise === undefined)) {
    throw new ValidationError('--syncs', 'give exactly one of --syncs <T> (the smallest σ for T syncs per device) and --noise <σ> (the syncs σ allows)');
  }
  const sigma =
    opts.noise !== undefined
      ? num('--noise', opts.noise, (x) => Number.isFinite(x) && x > 0, 'a number > 0')
      : noiseForSyncs(num('--syncs', opts.syncs!, (x) => Number.isInteger(x) && x >= 1 && x <= 1_000_000, 'an integer from 1 to 1000000'), budget, delta);
  const syncs = syncsWithinBudget(sigma, budget, delta);
  const acc = new RdpAccountant();
  const epsilonPerSync = acc.epsilonAfter(sigma, 1, 1, delta);
  acc.record(sigma, 1, syncs);
  // Six decimals, or six significant digits below 1 (a budget of 1e-9 is not ε = 0).
  const r6 = (x: number) => (Math.abs(x) >= 1 ? Math.round(x * 1e6) / 1e6 : Number(x.toPrecision(6)));
  return {
    budget,
    delta,
    noiseMultiplier: sigma,
    syncs,
    ...(syncs >= MAX_COUNTED_SYNCS ? { syncsCapped: true as const } : {}),
    epsilon: r6(acc.epsilon(delta)),
    epsilonRdp: r6(acc.epsilon(delta, 'improved')),
    epsilonPerSync: r6(epsilonPerSync),
  };
}

export function register(program: Command, io: { stdout: (s: string) => void } = { stdout: (s) => process.stdout.write(s) }): void {
  program
    .command('privacy')
    .description("Calibrate the server's noise multiplier against the devices' ε budget (the accountant sync() uses); one JSON line.")
    .option('--syncs <T>', 'syncs each device should be able to make: prints the smallest σ (4 decimals, rounded up) that allows them')
    .option('--noise <sigma>', 'a noise multiplier: prints how many syncs a device can make at it')
    .option('--budget <epsilon>', "each device's ε budget (the SDK's default)", '8')
    .option('--delta <delta>', 'δ of the (ε, δ) figures', '1e-5')
    .addHelpText(
      'after',
      '\nExamples:\n  localrec privacy --syncs 4          # {"budget":8,"delta":0.00001,"noiseMultiplier":1.2005,"syncs":4,"epsilon":7.99…}\n  localrec privacy --noise 1          # 2 syncs at σ = 1 within ε = 8\n  localrec serve … --noise 1.2005     # then run the server at that σ',
    )
    .action(async (opts: PrivacyCommandOptions) => {
      io.stdout(`${JSON.stringify(await runPrivacy(opts))}\n`);
    });
}
