from django.urls import include, path

urlpatterns = [
    path("", include("demo.urls")),
]

handler404 = "demo.views.not_found"
handler500 = "demo.views.server_error"
