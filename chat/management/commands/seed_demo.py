"""Demo users and demo conversations, idempotent: `make run` calls it on every start."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from chat.management.demo_history import seed_history
from chat.models import AgentMode, Conversation, Role, Tier, User, Workspace
from chat.services.conversations import (
    conversation_create,
    conversation_member_add,
    user_create,
    workspace_create,
    workspace_member_add,
)

DEMO_PASSWORD = "demo-password"
DEMO_USERS = [("alice", Tier.PRO), ("bob", Tier.FREE), ("carol", Tier.ENTERPRISE), ("dave", Tier.FREE)]
# Three humans and the assistant in `auto` mode: the assistant answers only when addressed
# (`@assistant`), and people mention each other with `@bob` (docs/protocol.md §8).
TEAM_TITLE = "Demo: team room"
# The team room lives in alice's team workspace, where dave is a member but not in the room: asking
# "@assistant invite @dave" shows an approval (docs/protocol.md §11) that alice, the owner, decides.
TEAM_WORKSPACE = "Demo team"


class Command(BaseCommand):
    help = "Create the demo users (alice, bob, carol; staff: admin) and the demo conversations."

    def handle(self, *args: Any, **options: Any) -> None:
        users = {}
        for username, tier in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            users[username] = user or user_create(username=username, password=DEMO_PASSWORD, tier=tier)
        if not User.objects.filter(username="admin").exists():
            user_create(
                username="admin", password=DEMO_PASSWORD, tier=Tier.ENTERPRISE, is_staff=True, is_superuser=True
            )
        if not Conversation.objects.filter(title="Demo: ask the assistant", created_by=users["alice"]).exists():
            # An assistant room: it answers every message, although three people are in it.
            created = conversation_create(
                creator=users["alice"], title="Demo: ask the assistant", agent_mode=AgentMode.ALWAYS
            )
            conversation_member_add(
                conversation_id=str(created.conversation.id), actor_id=users["alice"].id, username="bob", role="member"
            )
            conversation_member_add(
                conversation_id=str(created.conversation.id),
                actor_id=users["alice"].id,
                username="carol",
                role="viewer",
            )
        if not Conversation.objects.filter(title=TEAM_TITLE, created_by=users["alice"]).exists():
            workspace = workspace_create(owner=users["alice"], name=TEAM_WORKSPACE)
            for username in ("bob", "carol", "dave"):
                workspace_member_add(workspace=workspace, actor=users["alice"], username=username, role=Role.MEMBER)
            team = conversation_create(
                creator=users["alice"], title=TEAM_TITLE, agent_mode=AgentMode.AUTO, workspace_id=workspace.id
            )
            for username in ("bob", "carol"):
                conversation_member_add(
                    conversation_id=str(team.conversation.id),
                    actor_id=users["alice"].id,
                    username=username,
                    role="member",
                )
        # Six weeks of the team's past assistant use: figures for the analytics page and the analyst
        # ("@assistant how can we cut our AI spend?" in the team room).
        team_workspace = Workspace.objects.filter(name=TEAM_WORKSPACE, memberships__user=users["alice"]).first()
        if team_workspace is not None:
            seed_history(workspace=team_workspace, users=users)
        self.stdout.write(
            "Demo users: alice (pro), bob (free), carol (enterprise, viewer in the demo conversation), dave (free), "
            f"admin (staff) — password for all: {DEMO_PASSWORD}"
        )
