"""The example's three endpoints."""

from __future__ import annotations

from django.urls import path

from shop import views

urlpatterns = [
    path("orders", views.create_order),
    path("orders/<str:order_id>", views.show_order),
    path("orders/<str:order_id>/approval", views.approve),
]
