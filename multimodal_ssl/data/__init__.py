"""The data layer: sources, tokenizers and grain pipelines.

* :mod:`.sources`: ``get_source(spec, ...)`` turns a spec string such as
  ``"generated:shapes:test"`` into a random-access source with ``classnames`` /
  ``templates`` metadata; formats register under a prefix.
* :mod:`.shapes`: the built-in generated dataset (scenes, rendering, captions, splits).
* :mod:`.tokenizers`: ``get_tokenizer(spec, max_len)``; texts -> right-padded int32 rows.
* :mod:`.pipeline`: ``make_train_loader`` (shuffled, sharded, checkpointable grain
  loader) and ``make_eval_batches`` (ordered, finite pass); one batch format for both.
"""
