// The little JavaScript Herald's UI has; every page works without it.
// A brand's "all its sales" box ticks or clears every sale of that brand,
// and shows as ticked when they all are.
document.addEventListener("DOMContentLoaded", () => {
  const sales = (brand) =>
    document.querySelectorAll('input[name="sale_ids"][data-brand="' + CSS.escape(brand) + '"]');
  for (const all of document.querySelectorAll("input.brand-all")) {
    const sync = () => {
      const boxes = [...sales(all.dataset.brand)];
      all.checked = boxes.length > 0 && boxes.every((b) => b.checked);
    };
    all.addEventListener("change", () => {
      for (const box of sales(all.dataset.brand)) box.checked = all.checked;
    });
    for (const box of sales(all.dataset.brand)) box.addEventListener("change", sync);
    sync();
  }
});

// A live tail (`data-poll`) refetches its table every few seconds while the
// tab is visible, and stops once the session has ended (the fetch is
// redirected to sign-in) or the server refuses.
document.addEventListener("DOMContentLoaded", () => {
  for (const tail of document.querySelectorAll("[data-poll]")) {
    const seconds = Number(tail.dataset.pollSeconds) || 5;
    const timer = setInterval(async () => {
      if (document.hidden) return;
      try {
        const response = await fetch(tail.dataset.poll, { credentials: "same-origin" });
        if (!response.ok || response.redirected) {
          clearInterval(timer);
          return;
        }
        tail.innerHTML = await response.text();
      } catch {
        // A dropped connection: try again at the next tick.
      }
    }, seconds * 1000);
  }
});
