"""The login guard (docs/operations.md "Login attempts"): every password surface — the login page, the
admin's login and the token endpoint — locks a username after repeated failures, from one address fast
and from any address slower; the lock grows with each further lockout, holds even for the right
password, says when to come back (429, Retry-After) and staff see and clear it in the admin. Forged
refresh tokens lock the address that sends them.

The numbers are lowered per test through settings.CHAT_LOGIN_GUARD; the per-address windows of the
endpoints (a separate limit, in Redis) are raised out of the way, and every client has its own address.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client as HttpClient
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from chat.models import LoginLockout, User
from chat.services import login_guard
from chat.services.conversations import user_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]

USER_IP, USER, IP, TOKEN_IP = 3, 5, 40, 3  # failures before each scope locks
FIRST_LOCK_S, LONGEST_LOCK_S = 60, 600

_addresses = itertools.count(1)


@pytest.fixture(autouse=True)
def _guard_numbers(settings: Any) -> None:
    settings.CHAT_LOGIN_GUARD = {
        "user_ip": [USER_IP, 900, FIRST_LOCK_S, LONGEST_LOCK_S],
        "user": [USER, 3600, FIRST_LOCK_S, LONGEST_LOCK_S],
        "ip": [IP, 3600, FIRST_LOCK_S, LONGEST_LOCK_S],
        "token_ip": [TOKEN_IP, 3600, FIRST_LOCK_S, LONGEST_LOCK_S],
    }
    settings.CHAT_LOGIN_RATE = [1000, 60]


def new_address() -> str:
    n = next(_addresses)
    return f"10.88.{n // 250}.{n % 250 + 1}"


def person(**extra: Any) -> tuple[User, str]:
    password = "pw-" + uuid.uuid4().hex
    return user_create(username="guard" + uuid.uuid4().hex[:10], password=password, **extra), password


def page_login(path: str, username: str, password: str, ip: str) -> Any:
    return HttpClient(REMOTE_ADDR=ip).post(path, {"username": username, "password": password})


def token_login(username: str, password: str, ip: str) -> Any:
    return APIClient(REMOTE_ADDR=ip).post(
        "/api/auth/token/", {"username": username, "password": password}, format="json"
    )


def assert_locked(response: Any, lock_s: int = FIRST_LOCK_S) -> None:
    assert response.status_code == 429, response.content[:500]
    assert lock_s - 5 <= int(response["Retry-After"]) <= lock_s
    if response["Content-Type"].startswith("application/json"):
        error = response.json()["error"]
        assert error["code"] == "login_locked"
        assert error["retry_after"] == int(response["Retry-After"])
        assert "Too many failed login attempts" in error["message"]
    else:
        assert b"Too many failed login attempts" in response.content


def test_admin_login_locks_a_staff_account_even_for_the_right_password() -> None:
    staff, password = person(is_staff=True, is_superuser=True)
    ip = new_address()
    codes = [page_login("/admin/login/", staff.username, "wrong", ip).status_code for _ in range(USER_IP - 1)]
    assert codes == [200] * (USER_IP - 1)
    assert_locked(page_login("/admin/login/", staff.username, "wrong", ip))  # the failure that locks says so
    browser = HttpClient(REMOTE_ADDR=ip)
    refused = browser.post("/admin/login/", {"username": staff.username, "password": password})
    assert_locked(refused)
    assert b"for this account" in refused.content
    assert browser.get("/admin/").status_code == 302  # not logged in
    # Another address is not locked by this one's guesses (the account-wide lock needs more).
    assert page_login("/admin/login/", staff.username, password, new_address()).status_code == 302


def test_admin_login_has_a_per_address_window(settings: Any) -> None:
    settings.CHAT_LOGIN_RATE = [2, 60]
    settings.CHANNEL_PREFIX = f"guard{uuid.uuid4().hex[:8]}"  # fresh windows for this test
    staff, password = person(is_staff=True)
    ip = new_address()
    assert page_login("/admin/login/", "nobody", "x", ip).status_code == 200
    assert page_login("/admin/login/", "nobody", "x", ip).status_code == 200
    refused = page_login("/admin/login/", staff.username, password, ip)
    assert refused.status_code == 429
    assert b"Too many login attempts from your address" in refused.content
    assert 1 <= int(refused["Retry-After"]) <= 60


@pytest.mark.parametrize("surface", ["/login/", "/api/auth/token/"])
def test_each_surface_locks_per_username_and_address(surface: str) -> None:
    user, password = person()
    ip = new_address()

    def attempt(pw: str, where: str = ip) -> Any:
        if surface == "/login/":
            return page_login(surface, user.username, pw, where)
        return token_login(user.username, pw, where)

    ok = 302 if surface == "/login/" else 200
    for _ in range(USER_IP - 1):
        assert attempt("wrong").status_code in (200, 401)
    assert_locked(attempt("wrong"))
    assert_locked(attempt(password))
    assert attempt(password, new_address()).status_code == ok


def test_a_guess_spread_over_addresses_locks_the_username_everywhere() -> None:
    user, password = person()
    other, other_password = person()
    for _ in range(USER - 1):
        assert token_login(user.username, "wrong", new_address()).status_code == 401
    assert_locked(token_login(user.username.upper(), "wrong", new_address()))  # case does not escape the count
    assert_locked(token_login(user.username, password, new_address()))
    assert token_login(other.username, other_password, new_address()).status_code == 200


def test_a_username_that_does_not_exist_locks_the_same_way() -> None:
    ip = new_address()
    for _ in range(USER_IP - 1):
        assert token_login("no-such-user", "x", ip).status_code == 401
    assert_locked(token_login("no-such-user", "x", ip))


def test_each_further_lockout_doubles_up_to_the_longest(settings: Any) -> None:
    settings.CHAT_LOGIN_GUARD = {**settings.CHAT_LOGIN_GUARD, "user": [100, 3600, 60, 600]}  # user_ip alone here
    user, password = person()
    ip = new_address()
    row = {"scope": "user_ip", "username": user.username.casefold()}

    def fail_until_locked() -> Any:
        for _ in range(USER_IP - 1):
            assert token_login(user.username, "wrong", ip).status_code == 401
        return token_login(user.username, "wrong", ip)

    def time_passes() -> None:
        LoginLockout.objects.filter(**row).update(locked_until=timezone.now() - timedelta(seconds=1))

    assert_locked(fail_until_locked(), FIRST_LOCK_S)
    time_passes()
    assert_locked(fail_until_locked(), 2 * FIRST_LOCK_S)
    time_passes()
    assert_locked(fail_until_locked(), 4 * FIRST_LOCK_S)
    LoginLockout.objects.filter(**row).update(locked_until=timezone.now() - timedelta(seconds=1), lockouts=20)
    assert_locked(fail_until_locked(), LONGEST_LOCK_S)
    time_passes()
    assert token_login(user.username, password, ip).status_code == 200  # the lock ends when it says


def test_a_success_ends_the_addresss_count_for_that_username() -> None:
    user, password = person()
    ip = new_address()
    for _ in range(2):
        for _ in range(USER_IP - 1):
            assert token_login(user.username, "wrong", ip).status_code == 401
        assert token_login(user.username, password, ip).status_code == 200
    assert not LoginLockout.objects.filter(scope="user_ip").exists()


def test_parallel_guesses_cannot_slip_past_the_limit() -> None:
    """Each attempt is counted before its password is checked: of many attempts in flight at once,
    exactly the limit gets admitted."""
    barrier = threading.Barrier(12)
    keys = login_guard.password_keys("target", new_address())

    def one() -> bool:
        try:
            barrier.wait(10)
            return isinstance(login_guard.admit(keys), login_guard.Attempt)
        finally:
            connection.close()

    with ThreadPoolExecutor(12) as pool:
        admitted = sum(pool.map(lambda _: one(), range(12)))
    assert admitted == USER_IP


def test_staff_see_the_lockout_and_clear_it() -> None:
    user, password = person()
    staff, _ = person(is_staff=True, is_superuser=True)
    ip = new_address()
    for _ in range(USER_IP):
        token_login(user.username, "wrong", ip)
    assert_locked(token_login(user.username, password, ip))
    admin = HttpClient()
    admin.force_login(staff)
    listing = admin.get("/admin/chat/loginlockout/?state=locked")
    assert listing.status_code == 200
    assert user.username.casefold().encode() in listing.content
    locked = LoginLockout.objects.get(scope="user_ip", username=user.username.casefold())
    response = admin.post("/admin/chat/loginlockout/", {"action": "clear_lockouts", "_selected_action": [locked.id]})
    assert response.status_code == 302
    assert not LoginLockout.objects.filter(id=locked.id).exists()
    assert token_login(user.username, password, ip).status_code == 200


def test_forged_refresh_tokens_lock_the_address_but_expired_ones_do_not() -> None:
    user, password = person()
    ip = new_address()
    pair = token_login(user.username, password, new_address()).json()
    client = APIClient(REMOTE_ADDR=ip)

    def refresh(token: str) -> Any:
        return client.post("/api/auth/token/refresh/", {"refresh": token}, format="json")

    assert refresh(pair["refresh"]).status_code == 200
    for _ in range(TOKEN_IP - 1):
        assert refresh("not-a-token").status_code == 401
    assert_locked(refresh(pair["access"]))  # an access token is no refresh token: counted
    locked = refresh(pair["refresh"])
    assert locked.status_code == 429
    assert "from your address" in locked.json()["error"]["message"]
    assert (
        APIClient(REMOTE_ADDR=new_address())
        .post("/api/auth/token/refresh/", {"refresh": pair["refresh"]}, format="json")
        .status_code
        == 200
    )
    expired = RefreshToken.for_user(user)
    expired.set_exp(lifetime=timedelta(seconds=-1))
    elsewhere = APIClient(REMOTE_ADDR=new_address())
    codes = [
        elsewhere.post("/api/auth/token/refresh/", {"refresh": str(expired)}, format="json").status_code
        for _ in range(TOKEN_IP + 2)
    ]
    assert codes == [401] * (TOKEN_IP + 2)
