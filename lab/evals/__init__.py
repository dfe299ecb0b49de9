"""Evaluations of the reader: `python -m lab.evals needle|qa|summary`.

- needle: planted facts in long books; answer accuracy and whether the citations hold the fact, per
  retrieval mode (bm25, memory, fused), against the base model reading only the book's last pages;
  plus the memory-attribution variants' hit rates.
- qa: FairytaleQA, ROUGE-L of free-form answers: the full pipeline, the memory alone, the base model.
- summary: SQuALITY plot summaries, ROUGE-1/2/L: the pipeline, a lead baseline, the base model.

Each command prints markdown tables and writes its results as JSON (`--out FILE.json`);
docs/quality.md records the commands and the tables.
"""
