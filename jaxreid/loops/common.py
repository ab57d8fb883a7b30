"""What both re-ID loops share: evaluation records, the kept model, saved features and labels,
and the end of the loop (final model, results.json)."""

from __future__ import annotations

import pathlib

import numpy as np

from jaxreid import atomic, checkpoint, evaluation, parallel, records
from jaxreid.evaluation import METRIC_KEYS
from jaxreid.reid import export, extract


def open_records(config, reid_dir: pathlib.Path):
  """(checkpointer, metrics writer) of a loop in `reid_dir`, created if need be."""
  reid_dir.mkdir(parents=True, exist_ok=True)
  ckpt = checkpoint.Checkpointer(reid_dir / 'checkpoints', config.checkpoint.max_to_keep)
  writer = records.MetricsWriter(reid_dir, enabled=parallel.is_primary())
  return ckpt, writer


def metrics_of(result: dict) -> dict:
  """METRIC_KEYS -> value, from an evaluation result."""
  cmc = np.asarray(result['cmc'])
  out = {f'rank{k}': float(cmc[min(k, len(cmc)) - 1]) for k in (1, 5, 10, 20)}
  out.update(mAP=float(result['mAP']), mINP=float(result['mINP']))
  return out


def evaluate_model(variables, config, query, gallery, mesh, desc: str) -> tuple[dict, dict]:
  """(metrics, features) of a model on a query / gallery pair of splits."""
  qf = extract.extract_features(variables, config, query.image, np.arange(len(query)), mesh=mesh,
                                desc=f'{desc} query')
  gf = extract.extract_features(variables, config, gallery.image, np.arange(len(gallery)),
                                mesh=mesh, desc=f'{desc} gallery')
  result = evaluation.evaluate_features(qf, gf, query.pids, gallery.pids, query.camids,
                                        gallery.camids, max_rank=config.eval.max_rank,
                                        block_size=config.eval.distance_block, mesh=mesh)
  return metrics_of(result), {'query': qf, 'gallery': gf}


def evaluate_sets(variables, config, sets, mesh, desc: str) -> tuple[dict, dict | None, dict]:
  """(test metrics, validation metrics or None, test features) of a model."""
  test, feats = evaluate_model(variables, config, sets.query, sets.gallery, mesh, f'{desc} test')
  val = None
  if sets.val_query is not None:
    val, _ = evaluate_model(variables, config, sets.val_query, sets.val_gallery, mesh,
                            f'{desc} validation')
  return test, val, feats


def write_evaluation(writer: records.MetricsWriter, index: int, record: dict) -> None:
  """An evaluation record's test (and validation) metrics, at `index`, in the metrics files."""
  writer.write(index, {**{k: record[k] for k in METRIC_KEYS}, 'clusters': record['clusters']},
               prefix='test/')
  if 'val' in record:
    writer.write(index, record['val'], prefix='val/')


def print_evaluation(what: str, record: dict) -> None:
  """The one progress line of an evaluation on stdout."""
  print(f"{what}: {record['clusters']} clusters, rank-1 {100 * record['rank1']:.1f}, "
        f"mAP {100 * record['mAP']:.1f}", flush=True)


def save_features(path: pathlib.Path, feats: dict, query, gallery) -> None:
  """Test features (float16) with ids, for the t-SNE and ranked-result figures."""
  with atomic.writing(path) as tmp:
    np.savez(tmp, query=feats['query'].astype(np.float16),
             gallery=feats['gallery'].astype(np.float16), query_pids=query.pids,
             gallery_pids=gallery.pids, query_camids=query.camids, gallery_camids=gallery.camids)


def save_labels(path: pathlib.Path, labels: np.ndarray) -> None:
  """The pseudo-labels a step trains on, kept for analysis and for comparing runs."""
  with atomic.writing(path) as tmp:
    np.save(tmp, labels)


def is_better(record: dict, best: dict | None) -> bool:
  """Best by validation mAP (then rank-1); without a validation set the latest step is kept."""
  if best is None or 'val' not in record:
    return True
  key = lambda r: (r['val']['mAP'], r['val']['rank1'])
  return key(record) > key(best)


def keep_if_better(paths, variables, model_config, record: dict, best: dict | None) -> dict:
  """The new best record; a better model than the kept one replaces root/best_model."""
  if not is_better(record, best):
    return best
  export.save_model(paths.root / 'best_model', variables, model_config)
  return record


def results_of(steps: list[dict], best: dict | None) -> dict:
  """results.json: the kept (best) model's test metrics on top, the last step's, and every step."""
  last = steps[-1]
  best = best or last
  out = {k: best[k] for k in METRIC_KEYS}
  out['best'] = {'step': best['step'], 'clusters': best['clusters'],
                 **{k: best[k] for k in METRIC_KEYS}, **({'val': best['val']} if 'val' in best
                                                         else {})}
  out['last'] = {'step': last['step'], 'clusters': last['clusters'],
                 **{k: last[k] for k in METRIC_KEYS}}
  out['steps'] = [{'step': r['step'], 'clusters': r['clusters'],
                   **{k: r[k] for k in METRIC_KEYS}, **({'val': r['val']} if 'val' in r else {}),
                   **r['cluster_quality']} for r in steps]
  return out


def finish(paths, variables, model_config, results: dict, ckpt, writer) -> None:
  """The end of a loop: the last model in root/model, reid/results.json, files closed."""
  export.save_model(paths.root / 'model', variables, model_config)
  if parallel.is_primary():
    records.write_json_atomic(paths.reid / 'results.json', results)
  writer.close()
  ckpt.close()
