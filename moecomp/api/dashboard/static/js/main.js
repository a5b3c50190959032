// Entry point: run the code of the page named by <body data-page>.

import { initCompare } from "./compare.js";
import { initJob } from "./job.js";
import { initJobs } from "./jobs.js";
import { initNewJob } from "./newjob.js";
import { initWorkers } from "./workers.js";

const PAGES = {
  jobs: () => initJobs(document.querySelector("#jobs-page")),
  job: () => initJob(document.querySelector("#job-page")),
  compare: () => initCompare(document.querySelector("#compare-page")),
  new: () => initNewJob(document.querySelector("#new-page")),
  workers: () => initWorkers(document.querySelector("#workers-page")),
};

const start = PAGES[document.body.dataset.page];
if (start) {
  Promise.resolve(start()).catch((error) => {
    const main = document.querySelector("#main");
    main.prepend(Object.assign(document.createElement("p"), {
      className: "error", role: "alert", textContent: `This page failed to load: ${error.message}`,
    }));
  });
}
