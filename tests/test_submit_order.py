"""A server's prompts are queued in the order their jobs were claimed."""

from __future__ import annotations

import threading

from avatar_service.jobs.submit_order import SubmitOrder


def test_a_later_ticket_waits_for_the_earlier_one():
    """The second claim's prompt is queued only after the first one's, whatever the threads do."""
    order = SubmitOrder(wait_limit=10)
    first, second = order.ticket(), order.ticket()
    queued: list[int] = []
    later = threading.Thread(target=lambda: _queue(order, second, queued))
    later.start()
    later.join(0.2)
    assert later.is_alive() and queued == []  # still waiting for the first
    _queue(order, first, queued)
    later.join(10)
    assert queued == [first, second]


def test_a_ticket_given_up_lets_the_next_one_go():
    """A claim that never queues (failed, cancelled, resumed) does not hold the next one."""
    order = SubmitOrder(wait_limit=10)
    first, second = order.ticket(), order.ticket()
    order.done(first)
    queued: list[int] = []
    _queue(order, second, queued)
    assert queued == [second]
    order.done(second)  # done twice is harmless
    third = order.ticket()
    _queue(order, third, queued)
    assert queued == [second, third]


def test_an_earlier_ticket_stuck_holds_the_next_one_only_for_the_wait_limit():
    """A stuck earlier claim is waited for at most ``wait_limit``; then the next one goes."""
    order = SubmitOrder(wait_limit=0.05)
    order.ticket()  # never done
    queued: list[int] = []
    _queue(order, order.ticket(), queued)
    assert queued == [1]


def _queue(order: SubmitOrder, ticket: int, queued: list[int]) -> None:
    with order.turn(ticket):
        queued.append(ticket)
