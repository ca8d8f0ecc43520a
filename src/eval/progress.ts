/**
 * Progress on stderr: a redrawn bar when stderr is a terminal, otherwise an occasional plain line
 * (when a stage ends, and every 15 s), so logs of CI runs stay short and stdout stays pure JSON.
 */

export interface ProgressSink {
  isTTY?: boolean;
  write(s: string): unknown;
}

/**
 * @example
 * ```ts
 * const p = new Progress(process.stderr);
 * p.update('ease fit', 0.5);
 * p.done();
 * ```
 */
export class Progress {
  private lastDraw = 0;
  private lastLine = 0;
  private lastStep = -1;
  private label = '';
  private drawn = false;
  constructor(
    private readonly out: ProgressSink,
    private readonly now: () => number = () => Date.now(),
  ) {}

  update(label: string, fraction: number): void {
    const f = Math.min(1, Math.max(0, fraction));
    const t = this.now();
    if (label !== this.label) {
      this.label = label;
      this.lastStep = -1;
      this.lastDraw = 0;
    }
    if (this.out.isTTY) {
      if (t - this.lastDraw < 100 && f < 1) return;
      this.lastDraw = t;
      const width = 30;
      const full = Math.round(f * width);
      this.out.write(`\r${'█'.repeat(full)}${'░'.repeat(width - full)} ${(f * 100).toFixed(0).padStart(3)}% ${label}\x1b[K`);
      this.drawn = true;
      return;
    }
    // Without a terminal: one line when a stage finishes, and one every 15 s in a long stage.
    if (this.lastLine === 0) this.lastLine = t;
    const finished = f >= 1 && this.lastStep < 1;
    if (finished || t - this.lastLine >= 15000) {
      this.lastStep = f >= 1 ? 1 : 0;
      this.lastLine = t;
      this.out.write(`${label}: ${(f * 100).toFixed(0)}%\n`);
    }
  }

  /** A plain message on its own line (clears the bar first). */
  log(message: string): void {
    this.done();
    this.out.write(`${message}\n`);
  }

  done(): void {
    if (this.out.isTTY && this.drawn) this.out.write('\r\x1b[K');
    this.drawn = false;
  }
}
