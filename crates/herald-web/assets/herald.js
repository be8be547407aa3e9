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
