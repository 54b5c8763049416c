// The /docs page: Swagger UI (vendored, static/vendor/swagger-ui) on this service's /openapi.json.
// A file of its own because the page's Content-Security-Policy allows no inline script.
(function () {
  "use strict";
  const root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.specUrl,
    domNode: root,
    deepLinking: true,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null, // never send the document to a validator on another origin
    persistAuthorization: false, // a key typed here is forgotten when the page closes
    tryItOutEnabled: false,
    displayRequestDuration: true,
    defaultModelsExpandDepth: 0,
    supportedSubmitMethods: ["get", "post", "delete"],
  });
})();
