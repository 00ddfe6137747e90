"""The order state machine: every state listed, final states final, illegal actions refused."""

from __future__ import annotations

import itertools

import pytest

from server.domain.orders import TRANSITIONS, Action, State, next_state
from server.errors import FailedPrecondition

FINAL_STATES = {State.CANCELLED, State.REFUNDED, State.PAYMENT_FAILED}
# OrderService's contract (order_service.proto), written out again as a table.
ALLOWED = {
    (State.PAID, Action.CANCEL): State.CANCELLED,
    (State.PAID, Action.SHIP): State.SHIPPED,
    # A partial refund before shipping (refund_order refuses a full one: REFUND_ALL_UNSHIPPED).
    (State.PAID, Action.REFUND): State.PAID,
    (State.SHIPPED, Action.DELIVER): State.DELIVERED,
    (State.SHIPPED, Action.REFUND): State.PARTIALLY_REFUNDED,
    (State.DELIVERED, Action.REFUND): State.PARTIALLY_REFUNDED,
    (State.PARTIALLY_REFUNDED, Action.REFUND): State.PARTIALLY_REFUNDED,
}
EVERY_PAIR = list(itertools.product(State, Action))


def test_every_state_has_an_entry() -> None:
    assert set(TRANSITIONS) == set(State)


def test_final_states_and_pending_payment_allow_no_action() -> None:
    # PENDING_PAYMENT is left only by the payment provider's answer, never by a caller.
    for state in (*FINAL_STATES, State.PENDING_PAYMENT):
        assert dict(TRANSITIONS[state]) == {}, state


def test_only_the_provider_leads_into_pending_payment_or_payment_failed() -> None:
    targets = {target for actions in TRANSITIONS.values() for target in actions.values()}
    assert State.PENDING_PAYMENT not in targets
    assert State.PAYMENT_FAILED not in targets


def test_the_table_is_the_documented_one() -> None:
    listed = {
        (state, action): target
        for state, actions in TRANSITIONS.items()
        for action, target in actions.items()
    }
    assert listed == ALLOWED


@pytest.mark.parametrize(("state", "action"), EVERY_PAIR)
def test_next_state_follows_the_table_or_refuses(state: State, action: Action) -> None:
    expected = ALLOWED.get((state, action))
    if expected is not None:
        assert next_state(state, action) is expected
        return
    with pytest.raises(FailedPrecondition) as caught:
        next_state(state, action)
    error = caught.value
    assert error.reason == "ILLEGAL_TRANSITION"
    assert error.metadata == {"state": state.value, "action": action.value}
    assert state.value in error.message


def test_every_state_is_reachable_from_paid_or_the_provider() -> None:
    # PAID and PAYMENT_FAILED come from the provider; everything else from PAID by actions,
    # and a full refund lands on REFUNDED (order_actions.refund), not in the table.
    reached = {State.PENDING_PAYMENT, State.PAID, State.PAYMENT_FAILED, State.REFUNDED}
    frontier = [State.PAID]
    while frontier:
        for target in TRANSITIONS[frontier.pop()].values():
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(State)
