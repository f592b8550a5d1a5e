"""channels' `runworker`, plus the run supervisor when listening on `agent-runs`."""

from channels.management.commands.runworker import Command as ChannelsRunworker

from agents.worker import AgentWorker


class Command(ChannelsRunworker):
    worker_class = AgentWorker
