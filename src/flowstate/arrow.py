"""The vectorized path, in one import: ``ArrowStream`` and ``KeyedArrowStream`` (``flowstate.dataflow``),
the sources of record batches (``flowstate.connectors.arrow_files``) and the rules
(``flowstate.columnar``). pyarrow is an optional extra: ``pip install 'flowstate[arrow]'``."""

from flowstate.columnar import FUNCTIONS, BatchAggregate, ColumnKey, MissingExtraError
from flowstate.connectors.arrow_files import ParquetSource, TableSource
from flowstate.dataflow import ArrowStream, KeyedArrowStream

__all__ = ["FUNCTIONS", "ArrowStream", "BatchAggregate", "ColumnKey", "KeyedArrowStream", "MissingExtraError",
           "ParquetSource", "TableSource"]
