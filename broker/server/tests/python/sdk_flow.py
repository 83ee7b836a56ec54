"""One user's flow through the published Python SDK (PyPI apache-iggy 0.8.0), against the
broker at argv[1] (an address or a connection string) logged in as root with the password
argv[2]. Exits non-zero, with the
reason, on the first thing that is not as Iggy's server would answer.

Run by tests/python_sdk.rs, which starts the brokers and checks the result from the Rust SDK.
"""

import asyncio
import os
import sys

from apache_iggy import (
    AutoCommit,
    AutoCommitWhen,
    IggyClient,
    PollingStrategy,
    SendMessage,
)


async def flow(address: str, password: str) -> None:
    # An address, or a connection string (iggy://user:password@host:port?tls=true&...), which
    # is how this SDK takes TLS settings.
    if address.startswith("iggy://"):
        client = IggyClient.from_connection_string(address)
    else:
        client = IggyClient(address)
    await client.connect()
    await client.ping()
    await client.login_user("iggy", password)

    await client.create_stream("py")
    await client.create_topic("py", "events", 2)
    stream = await client.get_stream("py")
    assert (stream.name, stream.topics_count) == ("py", 1), (stream.name, stream.topics_count)
    topic = await client.get_topic("py", "events")
    assert topic.name == "events", topic.name
    assert await client.get_stream("missing") is None

    sent = [f"event {i}" for i in range(10)]
    await client.send_messages("py", "events", 1, [SendMessage(text) for text in sent])
    polled = await client.poll_messages("py", "events", 1, PollingStrategy.First(), 100, False)
    got = [(m.offset(), m.payload().decode()) for m in polled]
    assert got == list(enumerate(sent)), got
    last = await client.poll_messages("py", "events", 1, PollingStrategy.Last(), 1, False)
    assert [m.offset() for m in last] == [9], [m.offset() for m in last]

    # A consumer group member: joins, polls Next with offsets committed as it polls.
    consumer = await client.consumer_group(
        "readers",
        "py",
        "events",
        polling_strategy=PollingStrategy.Next(),
        batch_length=4,
        auto_commit=AutoCommit.When(AutoCommitWhen.PollingMessages()),
    )
    consumed = []
    done = asyncio.Event()

    async def take(message) -> None:
        consumed.append((message.partition_id(), message.offset(), message.payload().decode()))
        if len(consumed) == len(sent):
            done.set()

    await asyncio.wait_for(consumer.consume_messages(take, done), 20)
    assert consumed == [(1, i, text) for i, text in enumerate(sent)], consumed

    try:
        await client.create_stream("py")
    except RuntimeError as error:
        # The SDK names the status code it got back (1012).
        assert str(error).startswith("StreamNameAlreadyExists"), str(error)
    else:
        raise AssertionError("a second stream named py was created")


if __name__ == "__main__":
    asyncio.run(flow(sys.argv[1], sys.argv[2]))
    print("python sdk flow: ok", flush=True)
    # Once a consumer group consumer has run, the SDK's native extension aborts the process
    # during the interpreter's finalization in about a third of runs here (SIGABRT, no Python
    # frame, after the flow has finished), so the process ends without finalizing.
    os._exit(0)
