/**
 * A dense row-major float32 matrix: one contiguous buffer instead of nested JS arrays, so that
 * millions of embeddings stay compact and can cross process boundaries as bytes.
 */
export class Float32Matrix {
  readonly data: Float32Array;
  readonly rows: number;
  readonly dims: number;

  constructor(data: Float32Array, rows: number, dims: number) {
    if (data.length !== rows * dims) {
      throw new RangeError(`matrix data has ${data.length} values, expected ${rows} x ${dims}`);
    }
    this.data = data;
    this.rows = rows;
    this.dims = dims;
  }

  static zeros(rows: number, dims: number): Float32Matrix {
    return new Float32Matrix(new Float32Array(rows * dims), rows, dims);
  }

  /** Stack equal-length vectors into a matrix (copies). */
  static fromRows(rows: ArrayLike<number>[], dims?: number): Float32Matrix {
    const d = dims ?? rows[0]?.length ?? 0;
    const out = Float32Matrix.zeros(rows.length, d);
    rows.forEach((r, i) => {
      if (r.length !== d) throw new RangeError(`row ${i} has ${r.length} values, expected ${d}`);
      out.data.set(r, i * d);
    });
    return out;
  }

  /** Concatenate matrices with the same number of columns (copies). */
  static concat(parts: Float32Matrix[], dims?: number): Float32Matrix {
    const d = dims ?? parts[0]?.dims ?? 0;
    const rows = parts.reduce((n, p) => n + p.rows, 0);
    const out = Float32Matrix.zeros(rows, d);
    let offset = 0;
    for (const p of parts) {
      if (p.dims !== d) throw new RangeError(`cannot concatenate a ${p.dims}-column matrix to ${d} columns`);
      out.data.set(p.data, offset);
      offset += p.data.length;
    }
    return out;
  }

  /** A view of row i (no copy). */
  row(i: number): Float32Array {
    if (i < 0 || i >= this.rows) throw new RangeError(`row ${i} out of range 0..${this.rows - 1}`);
    return this.data.subarray(i * this.dims, (i + 1) * this.dims);
  }

  /** Keep the first `dims` columns (copies), as Matryoshka truncation does. */
  truncateColumns(dims: number): Float32Matrix {
    if (dims >= this.dims) return this;
    const out = Float32Matrix.zeros(this.rows, dims);
    for (let i = 0; i < this.rows; i++) out.data.set(this.row(i).subarray(0, dims), i * dims);
    return out;
  }

  /** L2-normalise every row in place, with torch.nn.functional.normalize's epsilon. */
  normalizeRows(): this {
    for (let i = 0; i < this.rows; i++) l2NormalizeInPlace(this.row(i));
    return this;
  }

  toArrays(): number[][] {
    const out: number[][] = new Array(this.rows);
    for (let i = 0; i < this.rows; i++) out[i] = Array.from(this.row(i));
    return out;
  }

  *[Symbol.iterator](): IterableIterator<Float32Array> {
    for (let i = 0; i < this.rows; i++) yield this.row(i);
  }
}

/** x / max(||x||, 1e-12), computed in float64 like a float32 reduction on a CPU would round to. */
export function l2NormalizeInPlace(v: Float32Array): Float32Array {
  let sum = 0;
  for (let i = 0; i < v.length; i++) {
    const x = v[i] as number;
    sum += x * x;
  }
  const norm = Math.max(Math.sqrt(sum), 1e-12);
  for (let i = 0; i < v.length; i++) v[i] = (v[i] as number) / norm;
  return v;
}

export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new RangeError(`vectors differ in length: ${a.length} vs ${b.length}`);
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] as number) * (b[i] as number);
  return s;
}
