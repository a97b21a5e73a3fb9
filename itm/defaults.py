"""The defaults and names that the command line shows before it runs anything (``itm --help``, argument checks).

Written here once, and imported from here by the modules that use them (the data folder, the server, the
export, ...), so that the CLI's parser reads them without importing those modules: they import TensorFlow at
their top, and this module imports nothing (``itm --help`` answers at once; tests/test_cli_light.py).
"""

# The data folder (itm.data.folder): all-MiniLM-L6-v2's sentence embedding, the course's precomputed one.
EMBEDDING_DIM = 384

# itm prepare (itm.data.prepare)
DATASETS = ("flickr8k", "flickr30k", "coco")
PREPARE_NEGATIVES = 5  # as many no-match as match lines for a 5-caption image

# itm ood-split (itm.data.ood)
OOD_PHOTOS = 600
PROTOCOL_PHOTOS = 1000  # the size of Flickr8k's standard retrieval test set
OOD_NEGATIVES = 2

# itm shard (itm.data.shards)
SHARDS_SUBDIR = "shards"
TARGET_SHARD_BYTES = 64 * 2**20  # default size: big enough for sequential reads, small enough for many readers

# itm embed (itm.models.encoders)
EMBED_BATCH_SIZE = 64
BACKENDS = ("tf", "sentence-transformers")

# itm evaluate, search (itm.evaluation.retrieval)
DEFAULT_RERANK = 20  # candidates per query the head re-scores: R@10 needs at least 10, the head costs k per query

# itm predict, rank, serve (itm.serving.matcher)
MAX_CAPTION_CHARS = 1000  # a caption longer than this is not a caption; the tokenizer keeps 256 tokens anyway

# itm serve (itm.serving.server)
DEFAULT_MAX_UPLOAD_MB = 10.0
MAX_UPLOAD_MB = 1024.0
DEFAULT_MAX_IMAGE_PIXELS = 16_000_000  # a 4000 x 4000 photo: 48 MB once decoded
MAX_CAPTIONS = 100
DEFAULT_READ_TIMEOUT = 30.0  # seconds for a request's whole body
DEFAULT_MAX_CONNECTIONS = 100  # open connections and requests together; more get 503 at once, none wait unbounded

# itm export (itm.serving.export)
EXPORT_FORMATS = ("savedmodel", "litert")
