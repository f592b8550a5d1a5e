from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from chat import api, api_agui, api_conversations, api_me, api_messages, api_search, views
from enterprise import api as webhooks_api
from enterprise import api_analytics, api_audit, api_export
from enterprise import views as enterprise_views
from monitoring import views as monitoring_views

urlpatterns = [
    path("", views.index, name="index"),
    # Pages that declare no icon (the admin's) make browsers ask for /favicon.ico.
    path("favicon.ico", RedirectView.as_view(url=static("chat/favicon.svg"), permanent=True)),
    path("c/<str:conversation_id>/", views.conversation, name="conversation"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Single sign-on (enterprise/sso.py): both answer 404 unless OIDC_RP_CLIENT_ID is configured. The names
    # are the ones mozilla-django-oidc reverses.
    path("oidc/authenticate/", views.SsoStart.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", views.SsoCallback.as_view(), name="oidc_authentication_callback"),
    # Before the admin's own routes: its login page behind the per-address window and the guard's 429.
    path("admin/login/", views.admin_login),
    path("admin/", admin.site.urls),
    # The OpenAPI schema of every /api/ route and its Swagger UI (chatsite/config/api_docs.py): signed-in
    # callers only. The split view serves the UI's init script as its own request: the CSP allows no inline one.
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(template_name="chat/api_docs.html"), name="api-docs"),
    path("api/auth/token/", api.TokenView.as_view(), name="token"),
    path("api/auth/token/refresh/", api.TokenRefresh.as_view(), name="token-refresh"),
    path("api/auth/logout-all/", api.LogoutAll.as_view(), name="logout-all"),
    path("api/conversations/", api_conversations.ConversationList.as_view()),
    path("api/conversations/<str:conversation_id>/", api_conversations.ConversationDetail.as_view()),
    path("api/conversations/<str:conversation_id>/members/", api_conversations.ConversationMembers.as_view()),
    path(
        "api/conversations/<str:conversation_id>/members/<str:user_id>/",
        api_conversations.ConversationMemberDetail.as_view(),
    ),
    path("api/conversations/<str:conversation_id>/join/", api_conversations.ConversationJoin.as_view()),
    # By events, or by messages (unit=messages): chat/api_messages.py serves both.
    path("api/conversations/<str:conversation_id>/events/", api_messages.ConversationEvents.as_view()),
    path("api/conversations/<str:conversation_id>/feedback/", api_messages.ConversationFeedback.as_view()),
    path(
        "api/conversations/<str:conversation_id>/runs/<str:run_id>/tool-calls/<str:call_id>/result/",
        api_messages.ToolCallResult.as_view(),
    ),
    path("api/conversations/<str:conversation_id>/messages/<str:message_id>/", api_messages.MessageDetail.as_view()),
    path(
        "api/conversations/<str:conversation_id>/messages/<str:message_id>/feedback/",
        api_messages.MessageFeedback.as_view(),
    ),
    # AG-UI (chat/api_agui.py, docs/protocol.md "AG-UI"): a run driven by any AG-UI frontend, and a run's export.
    path("api/search/", api_search.MessageSearch.as_view()),
    path("api/ag-ui/", api_agui.AguiRun.as_view()),
    path("api/runs/<str:run_id>/ag-ui/", api_agui.RunAguiExport.as_view()),
    path("api/workspaces/", api.WorkspaceList.as_view()),
    path("api/workspaces/<str:workspace_id>/members/", api.WorkspaceMembers.as_view()),
    path("api/workspaces/<str:workspace_id>/conversations/", api_conversations.WorkspaceConversations.as_view()),
    path("api/workspaces/<str:workspace_id>/audit/", api_audit.WorkspaceAudit.as_view()),
    # Owners' analytics and SLA reports (enterprise/api_analytics.py, docs/protocol.md §7), and the page.
    path("api/workspaces/<str:workspace_id>/analytics/", api_analytics.WorkspaceAnalytics.as_view()),
    path("api/workspaces/<str:workspace_id>/sla/", api_analytics.WorkspaceSla.as_view()),
    # Owners' streamed archive of the workspace (enterprise/api_export.py, docs/operations.md "Workspace export").
    path("api/workspaces/<str:workspace_id>/export/", api_export.WorkspaceExport.as_view()),
    path("w/<str:workspace_id>/analytics/", enterprise_views.workspace_analytics, name="workspace-analytics"),
    # A workspace's signed webhooks (enterprise/api.py, docs/operations.md "Webhooks"): owners only.
    path("api/workspaces/<str:workspace_id>/webhooks/", webhooks_api.WebhookList.as_view()),
    path("api/workspaces/<str:workspace_id>/webhooks/<str:webhook_id>/", webhooks_api.WebhookDetail.as_view()),
    path(
        "api/workspaces/<str:workspace_id>/webhooks/<str:webhook_id>/rotate-secret/",
        webhooks_api.WebhookRotateSecret.as_view(),
    ),
    path(
        "api/workspaces/<str:workspace_id>/webhooks/<str:webhook_id>/deliveries/",
        webhooks_api.WebhookDeliveries.as_view(),
    ),
    path(
        "api/workspaces/<str:workspace_id>/webhooks/<str:webhook_id>/deliveries/<str:delivery_id>/redeliver/",
        webhooks_api.WebhookRedeliver.as_view(),
    ),
    # The caller's own account and notifications (docs/protocol.md §7, §9): no id of anyone's in these paths.
    path("api/me/", api_me.Me.as_view()),
    path("api/me/notification-settings/", api_me.NotificationSettingsView.as_view()),
    path("api/me/notifications/", api_me.NotificationList.as_view()),
    path("api/me/notifications/read/", api_me.NotificationsRead.as_view()),
    path("api/me/notifications/test/", api_me.NotificationTest.as_view()),
    path("api/me/push-subscriptions/", api_me.PushSubscriptions.as_view()),
    path("settings/notifications/", views.notification_settings, name="notification-settings"),
    # The service worker from the site's root, so that its scope covers every page.
    path("sw.js", views.service_worker, name="service-worker"),
    path("livez", monitoring_views.livez),
    path("healthz", monitoring_views.healthz),
    path("readyz", monitoring_views.readyz),
    path("metrics", monitoring_views.metrics_view),
    path("staff/dashboard/", monitoring_views.dashboard, name="staff-dashboard"),
    path("staff/dashboard/data", monitoring_views.dashboard_data, name="staff-dashboard-data"),
]
