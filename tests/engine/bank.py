"""Bank transfers: a job whose every checkpoint can be audited offline for conservation of money.

The job: a source of transfers ``("transfer", i, payer, payee, amount)`` → ``key_by(payer)`` →
``Debit`` → ``key_by(payee)`` → ``Credit`` → ``FileSink`` of the ids of the credited transfers.

- ``Debit`` keeps the **balance** of each payer in value state, seeded with ``OPENING_BALANCE`` the
  first time it sees the account; it subtracts the amount and emits ``("credit", i, payee, amount)``.
  This is the only place where money leaves an account.
- ``Credit`` keeps what each payee **received** in value state (0 at first sight) and adds the amount.
  It is slow on purpose (it sleeps a millisecond every ``SLOW_EVERY`` records), so that both
  shuffles are back-pressured and an unaligned checkpoint finds transfers and credits in flight.
- The odd splits of the source are slow to read (``SLOW_READ_EVERY``): a ``Debit`` task finds the
  channel of one reader full and the other nearly empty, so an aligned barrier on the empty one waits
  for the barrier queued behind the full one, and an alignment timeout has something to cut short.

An account's money is its debit-side balance (``OPENING_BALANCE`` while ``Debit`` has not seen it)
plus what it received. Money in a credit record has left its payer and not yet reached its payee.

The audit reads a checkpoint directory through ``LocalCheckpointStorage`` and ``pickle`` only, and
checks each completed checkpoint as a Chandy–Lamport cut. In a consistent cut:

1. **Conservation**: the money of every account plus the amounts of the credits persisted as channel
   state of the ``Credit`` tasks equals ``OPENING_BALANCE`` times the number of accounts, exactly.
2. **Debit ledger**: the transfers the sources had read (every index below the position the
   checkpoint stored for its split) are either applied by ``Debit`` or persisted as channel state of
   the ``Debit`` tasks, never both; each payer's balance is the opening balance minus the transfers
   it applied.
3. **Credit ledger**: each applied transfer's credit is either applied by ``Credit`` or persisted as
   channel state of the ``Credit`` tasks, never both; each payee received the sum of the former.

An aligned checkpoint has no channel state: rules 2 and 3 then say that each operator applied
exactly what was upstream of the cut.
"""

from __future__ import annotations

import pickle
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flowstate as fs
from flowstate.state.memory import heap_snapshot_entries
from flowstate.storage.local import LocalCheckpointStorage

ACCOUNTS = ("ada", "bo", "cy", "dot", "eve", "fay", "gus", "hal", "ivy", "jo", "kim", "lou", "max", "ned", "ola", "pat")
"""The known set of accounts. Both subtasks of a keyed operator at parallelism 2 own some of them."""
OPENING_BALANCE = 1000
SPLITS = 4
SLOW_EVERY = 16
"""``Credit`` sleeps 1 ms every this many records."""
SLOW_READ_EVERY = 8
"""The odd splits sleep 1 ms every this many transfers they read."""

DEBIT_UID = "debit"
CREDIT_UID = "credit"

# Names in the task state files, as ``flowstate.runtime.task`` and the generator source write them
# (restated here, not imported: the audit shares no code with the engine).
SOURCE_STATE = "__source__"
CHANNEL_STATE = "__channels__"


def transfer(i: int) -> tuple[str, int, str, str, int]:
    """Transfer ``i``: ``("transfer", i, payer, payee, amount)``, a function of ``i`` only."""
    n = len(ACCOUNTS)
    payer = (i * 7 + 3) % n
    payee = (payer + 1 + (i * 5) % (n - 1)) % n
    return ("transfer", i, ACCOUNTS[payer], ACCOUNTS[payee], 1 + (i * 13) % 50)


def read_transfer(i: int) -> tuple[str, int, str, str, int]:
    """What the source reads: ``transfer(i)``, slowly for the odd splits."""
    if i % 2 and (i // 2) % SLOW_READ_EVERY == 0:
        time.sleep(0.001)
    return transfer(i)


class Debit(fs.KeyedProcessFunction):
    """Keyed by payer: subtracts the amount from its balance and emits the credit."""

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.balance = ctx.value_state("balance")

    def process(self, record: tuple[str, int, str, str, int], ctx: fs.RuntimeContext) -> Iterable[tuple[Any, ...]]:
        _, i, _, payee, amount = record
        balance = self.balance.value()
        if balance is None:
            balance = OPENING_BALANCE
        self.balance.update(balance - amount)
        yield ("credit", i, payee, amount)


class Credit(fs.KeyedProcessFunction):
    """Keyed by payee: adds the amount to what it received and emits the transfer's id. Slow."""

    def open(self, ctx: fs.RuntimeContext) -> None:
        self.received = ctx.value_state("received", default=0)
        self.seen = 0

    def process(self, record: tuple[str, int, str, int], ctx: fs.RuntimeContext) -> Iterable[int]:
        self.seen += 1
        if self.seen % SLOW_EVERY == 0:
            time.sleep(0.001)
        _, i, _, amount = record
        self.received.update(self.received.value() + amount)
        yield i


def bank(output: Path, count: int, *, parallelism: int = 2) -> fs.Dataflow:
    """The bank dataflow over transfers ``0 .. count - 1``, committing credited ids to ``output``."""
    flow = fs.Dataflow("bank", parallelism=parallelism)
    (flow.source(fs.GeneratorSource(read_transfer, count, splits=SPLITS, name="transfers"), uid="transfers")
         .key_by(lambda t: t[2])
         .process(Debit(), uid=DEBIT_UID)
         .key_by(lambda c: c[2])
         .process(Credit(), uid=CREDIT_UID)
         .sink(fs.FileSink(output), uid="credited"))
    return flow


# ---- the batch reference -------------------------------------------------------------------------


def final_money(count: int) -> dict[str, int]:
    """Each account's money after transfers ``0 .. count - 1``, computed in one pass."""
    money = dict.fromkeys(ACCOUNTS, OPENING_BALANCE)
    for i in range(count):
        _, _, payer, payee, amount = transfer(i)
        money[payer] -= amount
        money[payee] += amount
    return money


# ---- the audit -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """What one completed checkpoint says about the bank."""

    checkpoint_id: int
    final: bool
    positions: dict[str, int]
    """Split → next transfer index its source reader would read."""
    balances: dict[str, int]
    """Debit-side balance of every account ``Debit`` has seen."""
    received: dict[str, int]
    """What ``Credit`` had added to each account it has seen."""
    transfers_in_flight: tuple[tuple[Any, ...], ...]
    """Transfers persisted as channel state of the ``Debit`` tasks."""
    credits_in_flight: tuple[tuple[Any, ...], ...]
    """Credits persisted as channel state of the ``Credit`` tasks."""

    def money(self) -> dict[str, int]:
        return {a: self.balances.get(a, OPENING_BALANCE) + self.received.get(a, 0) for a in ACCOUNTS}


def _entries(operator_state: Any, table: str) -> dict[str, int]:
    """The entries of keyed value state ``table`` in an operator's part of a task state file."""
    return heap_snapshot_entries(operator_state.data, table)


def read_cuts(checkpoint_dir: Path) -> list[Cut]:
    """Every completed checkpoint in ``checkpoint_dir``, oldest first."""
    storage = LocalCheckpointStorage(checkpoint_dir)
    cuts = []
    for info in storage.list_checkpoints():
        if info.status != "completed":
            continue
        metadata = info.metadata
        positions: dict[str, int] = {}
        balances: dict[str, int] = {}
        received: dict[str, int] = {}
        in_flight: list[tuple[Any, ...]] = []
        for task in metadata.tasks:
            if task.handle is None:
                continue
            state = pickle.loads(storage.read_state(task.handle))
            positions.update(state.get(SOURCE_STATE, {}))
            if DEBIT_UID in state:
                balances.update(_entries(state[DEBIT_UID], "balance"))
            if CREDIT_UID in state:
                received.update(_entries(state[CREDIT_UID], "received"))
            for _channel, batches in sorted(state.get(CHANNEL_STATE, {}).items()):
                for data in batches:
                    in_flight.extend(tuple(record) for record in pickle.loads(data))
        cuts.append(Cut(
            int(metadata.checkpoint_id), metadata.final, positions, balances, received,
            tuple(r for r in in_flight if r[0] == "transfer"), tuple(r for r in in_flight if r[0] == "credit"),
        ))
    return cuts


def total_in_flight(cut: Cut) -> int:
    """The money in the credits persisted as channel state."""
    return sum(amount for _, _, _, amount in cut.credits_in_flight)


def audit(cut: Cut, count: int) -> list[str]:
    """Every way in which ``cut`` breaks the module's rules 1-3 (empty: a consistent cut)."""
    name = f"checkpoint {cut.checkpoint_id}"
    problems = []
    # Rule 1.
    total = sum(cut.money().values()) + total_in_flight(cut)
    if total != OPENING_BALANCE * len(ACCOUNTS):
        problems.append(f"{name}: {total} in the accounts and in flight, expected {OPENING_BALANCE * len(ACCOUNTS)}")
    strange = set(cut.balances) - set(ACCOUNTS) | set(cut.received) - set(ACCOUNTS)
    if strange:
        problems.append(f"{name}: unknown accounts {sorted(strange)}")
    # Rule 2.
    if sorted(cut.positions) != [f"gen-{k}" for k in range(SPLITS)]:
        problems.append(f"{name}: source positions for {sorted(cut.positions)}")
        return problems
    read = {i for i in range(count) if i < cut.positions[f"gen-{i % SPLITS}"]}
    pending = Counter(r[1] for r in cut.transfers_in_flight)
    if any(r != transfer(r[1]) for r in cut.transfers_in_flight):
        problems.append(f"{name}: a transfer in flight is not the one of its id")
    if [i for i, n in pending.items() if n > 1 or i not in read]:
        problems.append(f"{name}: transfers in flight twice or not read: "
                        f"{sorted(i for i, n in pending.items() if n > 1 or i not in read)[:5]}")
    applied = read - set(pending)
    debited = Counter()
    owed = Counter()
    for i in applied:
        _, _, payer, payee, amount = transfer(i)
        debited[payer] += amount
        owed[payee] += amount
    for account in ACCOUNTS:
        if OPENING_BALANCE - cut.balances.get(account, OPENING_BALANCE) != debited[account]:
            problems.append(f"{name}: {account} paid {OPENING_BALANCE - cut.balances.get(account, OPENING_BALANCE)}, "
                            f"the transfers applied before the cut sum to {debited[account]}")
    # Rule 3.
    credits = Counter(r[1] for r in cut.credits_in_flight)
    if any(r != ("credit", r[1], *transfer(r[1])[3:]) for r in cut.credits_in_flight):
        problems.append(f"{name}: a credit in flight is not the one of its transfer")
    if [i for i, n in credits.items() if n > 1 or i not in applied]:
        problems.append(f"{name}: credits in flight twice or of a transfer not applied: "
                        f"{sorted(i for i, n in credits.items() if n > 1 or i not in applied)[:5]}")
    arriving = Counter()
    for _, _, payee, amount in cut.credits_in_flight:
        arriving[payee] += amount
    for account in ACCOUNTS:
        if cut.received.get(account, 0) + arriving[account] != owed[account]:
            problems.append(f"{name}: {account} received {cut.received.get(account, 0)} with {arriving[account]} "
                            f"in flight, the transfers applied before the cut owe it {owed[account]}")
    return problems
