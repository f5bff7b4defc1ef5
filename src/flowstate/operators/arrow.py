"""Operators of the vectorized path (``flowstate.arrow``): their items are ``pyarrow.RecordBatch``.

Each follows the contract of ``flowstate.operators.base``; an engine batch is a list of record
batches and a barrier falls between two engine batches, so a checkpoint never splits a record batch.
pyarrow is imported when one of them is built: a job that has none never imports it.

- ``ToArrowOperator``: the Python records of an engine batch → one record batch (record batches
  pass as they are). Stateless.
- ``MapBatchesOperator``: ``fn`` per record batch. Stateless.
- ``ToRecordsOperator``: record batches → one dict per row. Stateless.
- ``AggregateBatchesOperator``: the keyed step of a keyed aggregation (rule 5 of
  ``flowstate.arrow``): the partial rows of an engine batch grouped once more by key in Arrow, then
  merged into each key's accumulator in value state, one state access per key of the batch (not per
  row). Step by step, per engine batch: (1) group the partial rows of its items by key (a single
  item needs no grouping: the partial step gave it one row per key); (2) for each key, in the
  group-by's order, read the accumulator, merge, write it back; (3) emit the key and result of every
  key touched, as one record batch. A key that is no key under ``flowstate.state.keys`` fails the
  batch naming ``key_by`` before any state is written for it.
"""

from __future__ import annotations

from typing import Any

from flowstate.columnar import MERGE_IN_ARROW, BatchAggregate, is_record_batch, require_pyarrow, shown
from flowstate.errors import UserFunctionError
from flowstate.operators.base import KEY_BY, Operator, OperatorEnv, _Keyed
from flowstate.state.keys import check_key


def _not_a_batch(operator: str, item: Any) -> TypeError:
    return TypeError(f"{operator} expects pyarrow.RecordBatch items, got {type(item).__name__} "
                     "(call to_arrow() on a stream of Python records first)")


class ToArrowOperator(Operator):
    def __init__(self, uid: str, name: str, env: OperatorEnv, schema: Any) -> None:
        super().__init__(uid, name, env)
        self.pa = require_pyarrow("to_arrow")
        self.schema = schema

    def process_batch(self, batch: list[Any]) -> list[Any]:
        out: list[Any] = []
        records: list[Any] = []
        for item in batch:
            if is_record_batch(item):
                if records:
                    out.append(self._convert(records))
                    records = []
                out.append(item)
            else:
                records.append(item)
        if records:
            out.append(self._convert(records))
        return out

    def _convert(self, records: list[Any]) -> Any:
        pa = self.pa
        schema = self.schema
        try:
            if isinstance(records[0], dict):
                return pa.RecordBatch.from_pylist(records, schema=schema)
            if schema is None:
                raise TypeError(f"records of type {type(records[0]).__name__} need a schema: to_arrow(schema=...) "
                                "names their fields (dict records need none)")
            columns = list(zip(*records)) if records else [()] * len(schema)
            if len(columns) != len(schema):
                raise TypeError(f"a record has {len(columns)} fields, the schema {len(schema)}")
            return pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)],
                                              schema=schema)
        except Exception as exc:
            raise UserFunctionError(self.name, records[0], exc) from exc


class MapBatchesOperator(Operator):
    def __init__(self, uid: str, name: str, env: OperatorEnv, fn: Any) -> None:
        super().__init__(uid, name, env)
        pa = require_pyarrow("map_batches")
        self.fn = fn
        self.record_batch = pa.RecordBatch
        self.table = pa.Table

    def process_batch(self, batch: list[Any]) -> list[Any]:
        fn = self.fn
        record_batch = self.record_batch
        out: list[Any] = []
        item = None
        try:
            for item in batch:
                if item.__class__ is not record_batch:
                    raise _not_a_batch("map_batches", item)
                result = fn(item)
                if result.__class__ is record_batch:
                    out.append(result)
                elif result is None:
                    continue
                elif isinstance(result, self.table):
                    out.extend(result.to_batches())
                else:
                    raise TypeError(f"the map_batches function returned {type(result).__name__}: return a "
                                    "pyarrow.RecordBatch, a pyarrow.Table or None")
        except Exception as exc:
            raise UserFunctionError(self.name, shown(item), exc) from exc
        return out


class ToRecordsOperator(Operator):
    def __init__(self, uid: str, name: str, env: OperatorEnv) -> None:
        super().__init__(uid, name, env)
        self.record_batch = require_pyarrow("to_records").RecordBatch

    def process_batch(self, batch: list[Any]) -> list[Any]:
        out: list[Any] = []
        for item in batch:
            if item.__class__ is not self.record_batch:
                raise UserFunctionError(self.name, shown(item), _not_a_batch("to_records", item))
            out.extend(item.to_pylist())
        return out


class AggregateBatchesOperator(_Keyed):
    """The keyed step of a keyed aggregation (see the module). Its accumulators are the tuples of
    the value state ``"acc"``, one value per partial aggregate (``BatchAggregate.parts``)."""

    def __init__(self, uid: str, name: str, env: OperatorEnv, key_fn: Any, aggregate: BatchAggregate) -> None:
        super().__init__(uid, name, env, key_fn)
        self.pa = require_pyarrow("aggregate")
        self.aggregate = aggregate
        self.merges = aggregate.merges()
        self.regroup = [(p.name, MERGE_IN_ARROW[p.function]) for p in aggregate.parts]
        self.regrouped = [f"{p.name}_{MERGE_IN_ARROW[p.function]}" for p in aggregate.parts]
        self.partial_names = [p.name for p in aggregate.parts]
        self.plan = aggregate.plan()
        """Per spec, the indices in an accumulator of its value (a mean's: of its sum and count)."""

    def open(self, resume_state: Any) -> None:
        super().open(resume_state)
        self.state = self.backend.value_state("acc")

    def _check_keys(self, kind: Any, keys: list[Any]) -> None:
        """Every key under the rules of keys, before any state is written. Integers, strings, bytes
        and booleans (and nulls: ``None``) always are keys: their columns are not looked at one by one."""
        types = self.pa.types
        if types.is_integer(kind) or types.is_string(kind) or types.is_large_string(kind) or \
                types.is_binary(kind) or types.is_boolean(kind):
            return
        for key in keys:
            try:
                check_key(key)
            except Exception as exc:
                raise UserFunctionError(KEY_BY, key, exc) from exc

    def process_batch(self, batch: list[Any]) -> list[Any]:
        pa = self.pa
        items = []
        for item in batch:
            if not is_record_batch(item):
                raise UserFunctionError(self.name, shown(item), _not_a_batch("aggregate", item))
            if item.num_rows:
                items.append(item)
        if not items:
            return []
        agg = self.aggregate
        # Step (1). One item holds one row per key already (the partial step made it): nothing to group.
        if len(items) == 1:
            grouped, names = items[0], self.partial_names
        else:
            try:
                grouped = pa.Table.from_batches(items).group_by(agg.key, use_threads=False).aggregate(self.regroup)
            except Exception as exc:
                raise UserFunctionError(self.name, shown(items[0]), exc) from exc
            names = self.regrouped
        key_column = grouped.column(agg.key)
        keys = key_column.to_pylist()
        self._check_keys(key_column.type, keys)
        partials = [grouped.column(n).to_pylist() for n in names]
        # Step (2)
        self.backend.maybe_fold()
        current = self.backend.keys
        value = self.state.value
        update = self.state.update
        accs: list[tuple[Any, ...]] = []
        append = accs.append
        if len(partials) == 1:  # the usual single aggregate, without the general loop's zips
            merge = self.merges[0]
            for key, part in zip(keys, partials[0]):
                current.current_key = key
                acc = value()
                new = (part,) if acc is None else (merge(acc[0], part),)
                update(new)
                append(new)
        else:
            merges = self.merges
            for key, partial in zip(keys, zip(*partials)):
                current.current_key = key
                acc = value()
                if acc is not None:
                    partial = tuple([m(a, b) for m, a, b in zip(merges, acc, partial)])
                update(partial)
                append(partial)
        # Step (3)
        columns = [key_column.combine_chunks() if hasattr(key_column, "combine_chunks") else key_column]
        schema = grouped.schema
        for (_column, function), (i, j) in zip(agg.specs, self.plan):
            if function == "mean":
                columns.append(pa.array([a[i] / a[j] if a[j] else None for a in accs], pa.float64()))
            else:
                columns.append(pa.array([a[i] for a in accs], schema.field(names[i]).type))
        return [pa.RecordBatch.from_arrays(columns, names=[agg.key, *agg.output_names()])]
