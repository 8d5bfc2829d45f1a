import { Injector, Signal, assertInInjectionContext, inject, isSignal } from '@angular/core';
import { toObservable } from '@angular/core/rxjs-interop';
import { Observable, of } from 'rxjs';

/** For calls made outside an injection context (say, in `ngOnInit`). */
export interface InjectionOptions {
  /** The injector whose `DestroyRef` ends the subscription (a component's `inject(Injector)`). */
  injector?: Injector;
}

/** A negocio id, or a signal of one (a component's `input()`): the channel follows it. */
export type NegocioRef = string | Signal<string>;

/**
 * The injector that owns a subscription: the one passed in, else the caller's injection context
 * (a component's field initializer or constructor), so that destroying the component releases it.
 */
export function owningInjector(caller: Function, options?: InjectionOptions): Injector {
  if (options?.injector) return options.injector;
  assertInInjectionContext(caller);
  return inject(Injector);
}

/** The negocio as a stream of ids: one for a string, each change for a signal. */
export function negocioIds(negocio: NegocioRef, injector: Injector): Observable<string> {
  return isSignal(negocio) ? toObservable(negocio, { injector }) : of(negocio);
}
