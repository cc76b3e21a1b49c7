// Exam view: archive state per destination (seed 000 "Archive States") and the order lock with the
// seed's message ("Archiving in progress — edits are not permitted until the archive job is complete.").
import { $, clear, h } from './dom.js';
import { seedDate } from './format.js';

const STATE_LABELS = { QUEUED: 'Queued', IN_PROGRESS: 'In Progress', COMPLETED: 'Completed', FAILED: 'Failed' };

export class ExamView {
  constructor(ctx) {
    this.ctx = ctx;
    $('#exam-search').addEventListener('submit', (e) => { e.preventDefault(); this.load($('#exam-id').value.trim()); });
  }

  async load(examId) {
    if (!examId) return;
    $('#exam-id').value = examId;
    const lock = $('#exam-lock');
    try {
      const exam = await this.ctx.api.get(`/v1/facility-groups/${encodeURIComponent(this.ctx.group)}/exams/${encodeURIComponent(examId)}`);
      lock.hidden = !exam.lock.locked;
      clear(lock);
      if (exam.lock.locked) {
        lock.append(h('strong', { text: exam.lock.message }),
          h('span', { text: ` Held by: ${exam.lock.jobs.map((j) => `${j.destination} (${STATE_LABELS[j.state] || j.state})`).join(', ')}` }));
      }
      const facts = clear($('#exam-facts'));
      for (const [k, v] of [['Exam', exam.exam_id], ['Accession', exam.accession], ['MRN', exam.mrn],
        ['Patient Name', exam.patient_name], ['Study Instance UID', exam.study_instance_uid],
        ['Order lock', exam.lock.locked ? 'Locked' : 'Not locked']]) {
        facts.append(h('dt', { text: k }), h('dd', { text: v ?? '' }));
      }
      const tbody = clear($('#exam-table tbody'));
      for (const d of exam.destinations) {
        tbody.append(h('tr', { 'data-destination': d.destination_id, 'data-state': d.state },
          h('td', { text: d.destination }), h('td', { text: d.label, class: `archive-${d.state.toLowerCase()}` }),
          h('td', { text: d.iocm }), h('td', { text: d.job_id || '', class: 'mono' }), h('td', { text: seedDate(d.updated_at) })));
      }
    } catch (e) {
      lock.hidden = false;
      clear(lock).append(e.status === 404 ? 'No such exam.' : e.message);
    }
  }
}
