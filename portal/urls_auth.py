"""Sign-in, sign-out, sign-up, password reset and adding accounts (namespace ``portal``)."""

from django.urls import path

from portal import views_auth as views

urlpatterns = [
    path("login/", views.PortalLoginView.as_view(), name="login"),
    path("logout/", views.PortalLogoutView.as_view(), name="logout"),
    path("signup/", views.signup, name="signup"),
    path("signup/verify/", views.signup_verify, name="signup-verify"),
    path("reset/", views.reset, name="reset"),
    path("reset/verify/", views.reset_verify, name="reset-verify"),
    path("bind/", views.bind, name="bind"),
    path("bind/verify/", views.bind_verify, name="bind-verify"),
]
