// adtrack's API page: Swagger UI over the server's own OpenAPI document.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#docs",
  deepLinking: true,
  tryItOutEnabled: true,
});
