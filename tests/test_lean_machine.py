"""The lifecycle's lean ``transitions`` machine decides as ``transitions``' own classes would.

``_lifecycle.MACHINE`` runs the table on lean subclasses of ``transitions``' ``Event`` and
``Transition`` (no empty callback lists walked, no debug logging, guards taken once): the same
rule must fire for every record and event as on a stock ``transitions.Machine`` built from the
same table. The shortcuts read off the table (``may_change``, ``fixed_noop``, a duplicate told
from the record alone) must agree with ``step``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transitions import EventData, Machine

from amo_oauth._events import CodeReceived, Event
from amo_oauth._lifecycle import (
    MACHINE,
    TABLE,
    NoOp,
    Rule,
    _LeanMachine,
    _Model,
    fixed_noop,
    may_change,
    rule_transition,
    step,
)
from amo_oauth._records import ConnectionRecord, ConnectionStatus

from helpers import examples
from strategies import T0, any_event, code_received, records

NOW = st.sampled_from([T0, T0 + timedelta(days=1)])


def _noting(rule: Rule) -> Any:
    def noted(data: EventData) -> bool:
        data.model.rule = rule
        return True

    return noted


def _stock() -> Machine:
    """The table on ``transitions``' own classes, each rule noted by a last condition."""
    return Machine(
        model=None,
        states=ConnectionStatus,
        transitions=[rule_transition(rule, _noting(rule)) for rule in TABLE],
        initial=ConnectionStatus.DISCONNECTED,
        auto_transitions=False,
        model_attribute="status",
        send_event=True,
    )


STOCK = _stock()


def _fire(machine: Machine, record: ConnectionRecord, event: Event, now: Any) -> _Model:
    model = _Model(record, event, now)
    machine.events[event.name].trigger(model)
    return model


@settings(max_examples=examples(200))
@given(record=records, event=any_event, now=NOW)
def test_the_lean_machine_fires_the_rule_the_stock_one_fires(record, event, now):
    lean, stock = _fire(MACHINE, record, event, now), _fire(STOCK, record, event, now)
    assert lean.rule is not None
    assert lean.rule is stock.rule
    assert lean.status == stock.status


@settings(max_examples=examples(200))
@given(record=records, event=any_event, now=NOW)
def test_the_shortcuts_agree_with_the_step(record, event, now):
    result = step(record, event, now)
    if not may_change(event.name, record.status):
        assert not result.changed
    fixed = fixed_noop(event.name, record.status)
    if fixed is not None:
        assert (result.changed, result.noop) == (False, fixed)


def test_every_status_has_pairs_each_way():
    """The shortcuts are not vacuous: some pairs may change and some may not, some no-ops are
    fixed (a connected record's verify_claimed, the lease_expired of a connected one)."""
    statuses = list(ConnectionStatus)
    events = {rule.event for rule in TABLE}
    pairs = [(e, s) for e in events for s in statuses]
    assert any(may_change(*pair) for pair in pairs)
    assert not may_change("lease_expired", ConnectionStatus.CONNECTED)
    assert may_change("lease_expired", ConnectionStatus.CODE_RECEIVED)
    assert fixed_noop("verify_claimed", ConnectionStatus.CONNECTED) == "nothing_to_verify"
    assert fixed_noop("refresh_claimed", ConnectionStatus.CONNECTED) is None


@pytest.mark.parametrize("option", ["before", "after", "prepare"])
def test_the_lean_machine_refuses_callbacks_it_would_skip(option):
    rule = TABLE[0]
    transition = {"trigger": rule.event, "source": "DISCONNECTED", "dest": None}
    with pytest.raises(ValueError, match="take no callbacks"):
        _LeanMachine(
            model=None,
            states=ConnectionStatus,
            transitions=[{**transition, "rule": rule, option: [lambda data: None]}],
            initial=ConnectionStatus.DISCONNECTED,
            auto_transitions=False,
            model_attribute="status",
            send_event=True,
        )


@pytest.mark.parametrize("option", ["prepare_event", "finalize_event", "before_state_change"])
def test_the_lean_machine_refuses_machine_callbacks(option):
    with pytest.raises(ValueError, match="no machine callbacks"):
        _LeanMachine(
            model=None,
            states=ConnectionStatus,
            transitions=[],
            initial=ConnectionStatus.DISCONNECTED,
            auto_transitions=False,
            model_attribute="status",
            send_event=True,
            **{option: [lambda data: None]},
        )


@settings(max_examples=examples(200))
@given(
    record=records,
    event=code_received(st.sampled_from(["code-1", "code-2"])),
    knows=st.booleans(),
    now=NOW,
)
def test_a_code_the_record_knows_is_a_duplicate_whatever_the_ledger_holds(
    record, event: CodeReceived, knows, now
):
    """``_flow_codes``' first look reads the record alone (the event says the ledger holds
    neither the code nor the state): its ``duplicate_code`` must be the table's answer to the
    event with the ledger read, whatever the ledger holds."""
    if knows:
        record = attrs.evolve(record, seen_codes=record.with_code(event.code_digest, now))
    unread = attrs.evolve(event, code_holder=None, state_holder=None)
    first_look = step(record, unread, now)
    if knows:
        assert first_look.noop is NoOp.DUPLICATE_CODE
    if first_look.noop is NoOp.DUPLICATE_CODE:
        assert step(record, event, now).noop is NoOp.DUPLICATE_CODE
